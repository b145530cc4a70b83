"""The vagrant wrapper: python-vagrant's verbs in a child with a deadline, against a fake
`vagrant` on PATH that prints captured text; and the pure decoders of what the child prints."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from lab.nodes.vagrant import (
    Box,
    MachineState,
    Vagrant,
    VagrantError,
    VagrantTimeout,
    boot_or_network_timeout,
    decode_boxes,
    decode_status,
)
from lab.nodes.vagrant_verb import progress_line

# Captured from vagrant 2.3.4 / vagrant-libvirt 0.11.2.
STATUS = """\
1763939000,node-a,metadata,provider,libvirt
1763939000,node-a,provider-name,libvirt
1763939000,node-a,state,running
1763939000,node-b,state,not_created
1763939000,,ui,info,Current machine states:
"""
# The format of `vagrant box list --machine-readable` (as in python-vagrant's docstring).
BOX_LIST = """\
1763939000,,box-name,virtdlm-debian12-0a1b2c3d4e5f6a7b
1763939000,,box-provider,libvirt
1763939000,,box-version,0
1763939000,,box-name,debian/bookworm64
1763939000,,box-provider,libvirt
1763939000,,box-version,12.20250126.1
"""
SSH_CONFIG = "Host node-a\n  HostName 192.168.123.36\n  User vagrant\n"


def fake_vagrant(tmp_path: Path, script: str) -> Vagrant:
    """A Vagrant wrapper whose `vagrant` is this shell script."""
    exe = tmp_path / "bin" / "vagrant"
    exe.parent.mkdir()
    exe.write_text(f"#!/bin/sh\n{script}\n")
    exe.chmod(0o755)
    env = {**os.environ, "PATH": f"{exe.parent}{os.pathsep}{os.environ['PATH']}"}
    return Vagrant(str(tmp_path), str(tmp_path / "logs" / "vagrant.log"), env)


def replies(**by_verb: str) -> str:
    """A fake vagrant's script: for `vagrant VERB ...`, print by_verb[VERB] and succeed."""
    cases = "".join(
        f"  {verb.replace('_', '-')}) cat <<'EOF'\n{text}EOF\n  ;;\n"
        for verb, text in by_verb.items()
    )
    return f'case "$1" in\n{cases}  *) echo "unexpected: $*" >&2; exit 9 ;;\nesac'


def test_status_is_python_vagrants_parse_of_the_machine_readable_text(tmp_path: Path) -> None:
    v = fake_vagrant(tmp_path, replies(status=STATUS))
    assert v.status() == [MachineState("node-a", "running"), MachineState("node-b", "not_created")]


def test_box_list_and_ssh_config(tmp_path: Path) -> None:
    v = fake_vagrant(tmp_path, replies(box=BOX_LIST, ssh_config=SSH_CONFIG))
    assert v.box_list() == [
        Box("virtdlm-debian12-0a1b2c3d4e5f6a7b", "libvirt", "0"),
        Box("debian/bookworm64", "libvirt", "12.20250126.1"),
    ]
    assert v.ssh_config("node-a") == SSH_CONFIG


def test_box_remove_names_the_box_and_its_provider(tmp_path: Path) -> None:
    v = fake_vagrant(tmp_path, f'echo "$*" > {tmp_path}/argv')
    v.box_remove("virtdlm-debian12-old", "libvirt")
    assert (tmp_path / "argv").read_text() == "box remove --force virtdlm-debian12-old libvirt\n"


def test_a_failed_query_raises_with_vagrants_own_words(tmp_path: Path) -> None:
    v = fake_vagrant(
        tmp_path, "echo 'A Vagrant environment or target machine is required' >&2; exit 1"
    )
    with pytest.raises(
        VagrantError, match=r"vagrant status failed \(rc 1\): A Vagrant environment"
    ):
        v.status()


def test_a_hung_vagrant_is_a_timeout_not_a_hang(tmp_path: Path) -> None:
    v = fake_vagrant(tmp_path, "echo '==> node-a: Waiting for machine to boot'; sleep 30")
    started = time.monotonic()
    with pytest.raises(VagrantTimeout, match="vagrant up did not finish in 3 s"):
        v.up(timeout_s=3.0)
    assert time.monotonic() - started < 10  # vagrant's sleep, in the child's group, was killed
    assert "Waiting for machine to boot" in Path(v.log_path).read_text()


def test_a_failing_up_raises_with_the_log_tail(tmp_path: Path) -> None:
    v = fake_vagrant(
        tmp_path, "echo 'The box could not be found'; echo 'on stderr too' >&2; exit 3"
    )
    with pytest.raises(VagrantError, match=r"(?s)up failed \(rc 3\).*The box could not be found"):
        v.up()
    assert "on stderr too" in v.log_tail()


def test_up_streams_progress_lines_as_they_come(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    v = fake_vagrant(
        tmp_path, "echo '==> node-a: Creating image (snapshot of base box volume).'; echo noise"
    )
    v.up()
    err = capfd.readouterr().err
    assert "Creating image" in err and "noise" not in err
    assert "noise" in v.log_tail()


def test_no_vagrant_on_path_says_so(tmp_path: Path) -> None:
    v = Vagrant(
        str(tmp_path), str(tmp_path / "vagrant.log"), {**os.environ, "PATH": "/nonexistent"}
    )
    with pytest.raises(VagrantError, match=r"rc 127\): The Vagrant executable cannot be found"):
        v.status()


@pytest.mark.parametrize(
    ("line", "shown"),
    [
        ("==> node-a: Creating image (snapshot of base box volume).\n", True),
        ("==> node-b: Waiting for domain to get an IP address...\n", True),
        ("    node-a: Key inserted! Disconnecting and reconnecting using new SSH key...\n", False),
    ],
    ids=["creating", "waiting-ip", "other"],
)
def test_progress_lines_are_the_milestones(line: str, shown: bool) -> None:
    out = progress_line(line, 12.3)
    assert (out is not None) == shown
    if out is not None:
        assert out == f"  [    12s] {line.strip()}"


def test_decoders_refuse_what_is_not_a_list() -> None:
    assert decode_status('[{"name": "node-a", "state": "running", "provider": null}]') == [
        MachineState("node-a", "running")
    ]
    assert decode_boxes('[{"name": "b", "provider": "libvirt", "version": null}]') == [
        Box("b", "libvirt", "")
    ]
    with pytest.raises(VagrantError, match="printed no JSON"):
        decode_status("Traceback (most recent call last):")
    with pytest.raises(VagrantError, match="printed dict, not a list"):
        decode_boxes("{}")


def test_retry_only_boot_and_network_timeouts() -> None:
    assert boot_or_network_timeout("Timed out while waiting for the machine to boot")
    assert not boot_or_network_timeout("The box 'x' could not be found")
