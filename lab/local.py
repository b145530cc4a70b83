"""The local (single-host) lab: a private libvirtd with the dlm lock manager, on this host.

Everything runs inside one private mount namespace, anchored by a ``sleep`` process started
with ``unshare --mount --propagation private``. In it, private directories are bind-mounted
over /etc/libvirt, /run/libvirt, /var/lib/libvirt, /var/log/libvirt and /var/cache/libvirt,
so the lab's virtlogd, virtlockd, libvirtd, virtdlmd (model backend, on a model server that
outlives it) and QEMU see standard paths while the host's own libvirt is untouched. Clients
reach the private libvirtd at ``qemu:///system?socket=<root>/run/libvirt/libvirt-sock``.
Whatever the lab leaves running is detached from the caller's terminal (stdin /dev/null,
stdout and stderr to <root>/logs/), so ``make local-lab 2>&1 | tee log`` returns.

    python -m lab.local start|stop|status [--root DIR] [--lock-manager dlm|lockd|nop]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from .command import alive, check, read_pid, run
from .wait import LabError, wait_for

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_ROOT = os.path.join(REPO, ".lab", "local")
BUILD_DRIVER = os.path.join(REPO, "build", "dlm.so")
SYSTEM_LOCK_DRIVERS = "/usr/lib/x86_64-linux-gnu/libvirt/lock-driver"
PRIVATE_DIRS = {
    "etc": "/etc/libvirt",
    "run": "/run/libvirt",
    "lib": "/var/lib/libvirt",
    "log": "/var/log/libvirt",
    "cache": "/var/cache/libvirt",
}
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
STATUS_TIMEOUT_S = 2.0
MAX_SOCKET_PATH_BYTES = 100
LOCK_MANAGERS = ("dlm", "lockd", "nop")


def default_root() -> str:
    """<repo>/.lab/local, unless its socket paths would be too long for a unix socket."""
    probe = os.path.join(DEFAULT_ROOT, "run", "libvirt", "virtlockd-admin-sock")
    if len(probe.encode()) <= MAX_SOCKET_PATH_BYTES:
        return DEFAULT_ROOT
    digest = hashlib.sha256(REPO.encode()).hexdigest()[:8]
    return f"/run/virtdlm-local-{digest}"


def config_files(lock_manager: str) -> dict[str, str]:
    """The private daemons' configuration files, by path under the lab's root."""
    return {
        "etc/libvirtd.conf": 'auth_unix_rw = "none"\nunix_sock_rw_perms = "0700"\n'
        'log_outputs = "3:file:/var/log/libvirt/libvirtd.log"\n',
        "etc/qemu.conf": f'lock_manager = "{lock_manager}"\nuser = "root"\ngroup = "root"\n'
        'security_driver = "none"\ncgroup_controllers = [ ]\nnamespaces = [ ]\n'
        "remember_owner = 0\n",
        "etc/qemu-dlm.conf": "# local lab: the model backend, on a model server that outlives "
        'virtdlmd\nbackend = "model"\nmodel_socket = "/run/libvirt/virtdlm-model.sock"\n'
        'node_name = "local"\nstate_dir = "/run/libvirt/virtdlmd-state"\n',
        "etc/qemu-lockd.conf": "auto_disk_leases = 1\n",
        "etc/virtlogd.conf": 'log_outputs = "3:file:/var/log/libvirt/virtlogd.log"\n',
        "etc/virtlockd.conf": 'log_outputs = "3:file:/var/log/libvirt/virtlockd.log"\n',
    }


@dataclass
class LocalLab:
    root: str
    lock_manager: str = "dlm"

    # -- paths ------------------------------------------------------------------------------

    def path(self, key: str, *rest: str) -> str:
        return os.path.join(self.root, key, *rest)

    @property
    def uri(self) -> str:
        return f"qemu:///system?socket={self.path('run', 'libvirt-sock')}"

    @property
    def dlm_socket(self) -> str:
        return self.path("run", "virtdlmd.sock")

    @property
    def images(self) -> str:
        return os.path.join(self.root, "images")

    @property
    def logs(self) -> str:
        return os.path.join(self.root, "logs")

    @property
    def _state_file(self) -> str:
        return os.path.join(self.root, "lab.json")

    # -- the namespace ----------------------------------------------------------------------

    def anchor_pid(self) -> int | None:
        try:
            with open(self._state_file, encoding="utf-8") as f:
                pid = int(json.load(f)["anchor_pid"])
        except (OSError, ValueError, KeyError):
            return None
        return pid if alive(pid) else None

    def ns(self, *argv: str) -> list[str]:
        """argv to run inside the lab's mount namespace."""
        pid = self.anchor_pid()
        if pid is None:
            raise LabError(f"local lab at {self.root} is not running: make local-lab")
        return ["nsenter", "-t", str(pid), "-m", "--", *argv]

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> int:
        """Start a long-running process in the namespace; its output goes to logs/NAME.log."""
        with open(os.path.join(self.logs, f"{name}.log"), "ab") as log:
            proc = subprocess.Popen(
                self.ns(*argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                start_new_session=True,
            )
        with open(self.path("run", f"{name}.lab-pid"), "w", encoding="ascii") as f:
            f.write(f"{proc.pid}\n")
        return proc.pid

    # -- configuration ----------------------------------------------------------------------

    def write_config(self) -> None:
        for relpath, text in config_files(self.lock_manager).items():
            path = os.path.join(self.root, relpath)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
        drivers = os.path.join(self.root, "lock-driver")
        os.makedirs(drivers, exist_ok=True)
        for name, target in (
            ("dlm.so", BUILD_DRIVER),
            ("lockd.so", os.path.join(SYSTEM_LOCK_DRIVERS, "lockd.so")),
        ):
            link = os.path.join(drivers, name)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(link)
            os.symlink(target, link)

    # -- lifecycle --------------------------------------------------------------------------

    def is_up(self) -> bool:
        pid = read_pid(self.path("run", "libvirtd.pid"))
        return self.anchor_pid() is not None and pid is not None and alive(pid)

    def start(self) -> None:
        """Bring the lab up; a no-op when it is already up with the same lock manager."""
        if self.is_up() and self.current_lock_manager() == self.lock_manager:
            return
        self.stop()
        if self.lock_manager == "dlm" and not os.path.exists(BUILD_DRIVER):
            raise LabError(f"{BUILD_DRIVER} is missing: run 'make plugin' first")
        for key in PRIVATE_DIRS:
            os.makedirs(self.path(key), exist_ok=True)
        os.makedirs(self.images, exist_ok=True)
        os.makedirs(self.logs, exist_ok=True)
        self.write_config()
        # Detached from the caller's terminal like the daemons: a holder of the caller's
        # stdout would keep `make local-lab | tee log` waiting for it forever.
        with open(os.path.join(self.logs, "namespace.log"), "ab") as log:
            anchor = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "sleep", "infinity"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        self._save_state(anchor.pid, [])
        wait_for(lambda: self._in_new_ns(anchor.pid), START_TIMEOUT_S, what="unshare")
        created = [t for t in PRIVATE_DIRS.values() if not os.path.isdir(t)]
        for target in created:  # mount points only; removed again by stop()
            os.makedirs(target)
        self._save_state(anchor.pid, created)
        for key, target in PRIVATE_DIRS.items():
            check(self.ns("mount", "--bind", self.path(key), target), timeout_s=10)
        self.start_daemons()

    def _save_state(self, anchor_pid: int, created: list[str]) -> None:
        with open(self._state_file, "w", encoding="utf-8") as f:
            json.dump(
                {
                    "anchor_pid": anchor_pid,
                    "lock_manager": self.lock_manager,
                    "created_mount_points": created,
                },
                f,
            )

    def _created_mount_points(self) -> list[str]:
        try:
            with open(self._state_file, encoding="utf-8") as f:
                return list(json.load(f).get("created_mount_points", []))
        except (OSError, ValueError):
            return []

    def _in_new_ns(self, pid: int) -> bool:
        try:
            return os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink(
                "/proc/self/ns/mnt"
            ) and os.readlink(f"/proc/{pid}/exe").endswith("sleep")
        except OSError:
            return False

    def current_lock_manager(self) -> str | None:
        try:
            with open(self._state_file, encoding="utf-8") as f:
                return str(json.load(f)["lock_manager"])
        except (OSError, ValueError, KeyError):
            return None

    def start_daemons(self) -> None:
        for name in ("virtlogd", "virtlockd"):
            check(self.ns(name, "-d", "--pid-file", f"/run/libvirt/{name}.pid"), timeout_s=20)
        self.start_model_server()
        self.start_virtdlmd()
        self.start_libvirtd()

    def start_model_server(self) -> None:
        sock = self.path("run", "virtdlm-model.sock")
        self._spawn(
            "model-server",
            [
                sys.executable,
                "-m",
                "virtdlm.backends.model_server",
                "--socket",
                "/run/libvirt/virtdlm-model.sock",
            ],
            env=self._py_env(),
        )
        wait_for(lambda: os.path.exists(sock), START_TIMEOUT_S, what=f"model server {sock}")

    def start_virtdlmd(self) -> None:
        self._spawn(
            "virtdlmd",
            [sys.executable, "-m", "virtdlm.daemon", "--config", "/etc/libvirt/qemu-dlm.conf"],
            env=self._py_env(),
        )
        wait_for(
            lambda: self._virtdlmd_answers(),
            START_TIMEOUT_S,
            what=f"virtdlmd on {self.dlm_socket} (log {self.logs}/virtdlmd.log)",
        )

    def _virtdlmd_answers(self) -> bool:
        from virtdlm.client import status

        return bool(status(self.dlm_socket, timeout_s=STATUS_TIMEOUT_S))

    def start_libvirtd(self) -> None:
        env = dict(
            os.environ, LIBVIRT_LOCK_MANAGER_PLUGIN_DIR=os.path.join(self.root, "lock-driver")
        )
        check(
            self.ns(
                "env",
                f"LIBVIRT_LOCK_MANAGER_PLUGIN_DIR={env['LIBVIRT_LOCK_MANAGER_PLUGIN_DIR']}",
                "libvirtd",
                "-d",
                "--pid-file",
                "/run/libvirt/libvirtd.pid",
            ),
            timeout_s=30,
        )
        wait_for(
            lambda: run(["virsh", "-c", self.uri, "version"], timeout_s=10).ok,
            START_TIMEOUT_S,
            interval_s=0.2,
            what=f"libvirtd at {self.uri} (log {self.path('log', 'libvirtd.log')})",
        )

    def _py_env(self) -> dict[str, str]:
        return dict(os.environ, PYTHONPATH=os.path.join(REPO, "plugin") + os.pathsep + REPO)

    def pid_of(self, name: str) -> int | None:
        """pid of a lab daemon: libvirtd/virtlogd/virtlockd by pid file, ours by lab-pid."""
        for leaf in (f"{name}.pid", f"{name}.lab-pid"):
            pid = read_pid(self.path("run", leaf))
            if pid is not None and alive(pid):
                return pid
        return None

    def kill(self, name: str, sig: int = signal.SIGTERM) -> None:
        """Signal a lab daemon and wait until it is gone."""
        pid = self.pid_of(name)
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        wait_for(
            lambda: not alive(pid),
            STOP_TIMEOUT_S,
            what=f"{name} (pid {pid}) to exit",
        )

    def qemu_pid(self, domain: str) -> int | None:
        return read_pid(self.path("run", "qemu", f"{domain}.pid"))

    def namespace_pids(self) -> list[int]:
        anchor = self.anchor_pid()
        if anchor is None:
            return []
        try:
            ns = os.readlink(f"/proc/{anchor}/ns/mnt")
        except OSError:
            return []
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{entry}/ns/mnt") == ns:
                        pids.append(int(entry))
        return pids

    def stop(self) -> None:
        """Destroy the lab's domains, stop its daemons, leave nothing behind. Idempotent."""
        anchor = self.anchor_pid()
        if anchor is not None and self.pid_of("libvirtd") is not None:
            with contextlib.suppress(LabError):
                from .virt.hypervisor import Hypervisor

                hv = Hypervisor(self.uri, timeout_s=20)
                try:
                    hv.remove_all()
                finally:
                    hv.close()
        for name in ("libvirtd", "virtdlmd", "model-server", "virtlockd", "virtlogd"):
            with contextlib.suppress(LabError):
                self.kill(name)
        for pid in self.namespace_pids():  # QEMU or helpers left over: ours, by namespace
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if anchor is not None:
            wait_for(
                lambda: not alive(anchor),
                STOP_TIMEOUT_S,
                what="lab namespace to empty",
            )
        for target in self._created_mount_points():
            with contextlib.suppress(OSError):
                os.rmdir(target)  # only if still empty: never remove the host's files
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._state_file)
        shutil.rmtree(self.path("run"), ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lab.local", description=__doc__.splitlines()[0]
    )
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--root", default=default_root())
    parser.add_argument("--lock-manager", default="dlm", choices=LOCK_MANAGERS)
    args = parser.parse_args(argv)
    lab = LocalLab(args.root, args.lock_manager)
    started = time.monotonic()
    if args.action == "start":
        print(f"local lab: starting at {lab.root} (lock manager {lab.lock_manager})", flush=True)
        lab.start()
        print(
            f"local lab: up in {time.monotonic() - started:.1f} s\n  uri: {lab.uri}\n"
            f"  virtdlmd: {lab.dlm_socket}\n  logs: {lab.logs}",
            flush=True,
        )
    elif args.action == "stop":
        lab.stop()
        print(f"local lab: stopped in {time.monotonic() - started:.1f} s", flush=True)
    else:
        up = lab.is_up()
        print(f"local lab at {lab.root}: {'up' if up else 'down'}")
        return 0 if up else 3
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
