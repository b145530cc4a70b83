"""One vagrant verb through python-vagrant, as a child program its caller can end at a deadline.

python-vagrant has no deadlines and starts vagrant in its caller's process group, so
lab.nodes.vagrant runs this program through lab.command.run: in its own session, whose
process group (this program, vagrant, and every ssh or helper vagrant starts) is killed at
the deadline. Only the standard library and python-vagrant are imported here.

    python -m lab.nodes.vagrant_verb --root DIR --log FILE VERB [ARGS]

    up [--provision]          vagrant's output to FILE, progress lines on stderr
    destroy                   vagrant's output to FILE
    status | box-list         one JSON list on stdout (python-vagrant's records)
    ssh-config NAME           one JSON string on stdout
    box-remove NAME PROVIDER  vagrant's output to FILE, its errors on stderr

The exit code is vagrant's when vagrant failed (its errors on stderr or in FILE), 127 when
there is no vagrant to run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import IO, Any

import vagrant

PROGRESS_MARKERS = (
    "Bringing machine",
    "Creating image",
    "Uploading base box",
    "Waiting for domain",
    "Waiting for machine to boot",
    "Machine booted",
)
MAX_PROGRESS_CHARS = 110
NO_VAGRANT_RC = 127


def progress_line(line: str, elapsed_s: float) -> str | None:
    """The terminal's line for one line of `vagrant up`, or None when it is not a milestone."""
    if not any(m in line for m in PROGRESS_MARKERS):
        return None
    return f"  [{elapsed_s:6.0f}s] {line.strip()[:MAX_PROGRESS_CHARS]}"


def _file_cm(path: str) -> Callable[[], contextlib.AbstractContextManager[IO[str]]]:
    """python-vagrant's out_cm/err_cm: the log, opened for appending for each command."""

    @contextlib.contextmanager
    def cm() -> Iterator[IO[str]]:
        with open(path, "a", encoding="utf-8") as f:
            yield f

    return cm


def up(v: Any, log_path: str, provision: bool) -> None:
    """Stream `vagrant up` into the log, with the elapsed time on each line."""
    started = time.monotonic()
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"\n### vagrant up ({time.strftime('%F %T')})\n")
        log.flush()
        for line in v.up(provision=provision, stream_output=True):
            elapsed = time.monotonic() - started
            log.write(f"[{elapsed:7.1f}] {line}")
            log.flush()  # vagrant's stderr goes to the same file through another handle
            shown = progress_line(line, elapsed)
            if shown is not None:
                sys.stderr.write(shown + "\n")
                sys.stderr.flush()


def run_verb(args: argparse.Namespace) -> object:
    """Run the verb; return what to print on stdout (None: nothing)."""
    logged = _file_cm(args.log)
    if args.verb == "up":
        up(vagrant.Vagrant(args.root, err_cm=logged), args.log, args.provision)
        return None
    if args.verb in ("destroy", "box-remove"):
        with open(args.log, "a", encoding="utf-8") as log:
            log.write(f"\n### vagrant {args.verb} ({time.strftime('%F %T')})\n")
        err_cm = logged if args.verb == "destroy" else vagrant.stderr_cm
        v = vagrant.Vagrant(args.root, out_cm=logged, err_cm=err_cm)
        if args.verb == "destroy":
            v.destroy()
        else:
            v.box_remove(args.name, args.provider)
        return None
    v = vagrant.Vagrant(args.root, err_cm=vagrant.stderr_cm)  # its errors: ours, captured
    if args.verb == "status":
        return [s._asdict() for s in v.status()]
    if args.verb == "box-list":
        return [b._asdict() for b in v.box_list()]
    return str(v.ssh_config(vm_name=args.name))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lab.nodes.vagrant_verb")
    p.add_argument("--root", required=True)
    p.add_argument("--log", required=True)
    verbs = p.add_subparsers(dest="verb", required=True)
    verbs.add_parser("up").add_argument("--provision", action="store_true")
    for name in ("destroy", "status", "box-list"):
        verbs.add_parser(name)
    verbs.add_parser("ssh-config").add_argument("name")
    remove = verbs.add_parser("box-remove")
    remove.add_argument("name")
    remove.add_argument("provider")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        value = run_verb(args)
    except subprocess.CalledProcessError as err:
        return int(err.returncode)  # vagrant said why: on stderr or in the log
    except RuntimeError as err:  # python-vagrant: no vagrant executable on PATH
        sys.stderr.write(f"{err}\n")
        return NO_VAGRANT_RC
    if value is not None:
        sys.stdout.write(json.dumps(value) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
