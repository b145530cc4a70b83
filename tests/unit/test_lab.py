"""The lab kit's pure parts, on captured text: refusal classifier, audit, XML, polling."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET

import libvirt
import pytest

from lab.command import CommandFailed, CommandNotStarted, CommandTimeout, check, run
from lab.local import config_files
from lab.suite.audit import LogWatch, double_writers, rw_exclusive_disks
from lab.virt.domain import Disk, DomainSpec, Lease, domain_xml
from lab.virt.refusal import LOCK_DAEMON_DOWN, LOCK_MANAGER, OTHER, QEMU_IMAGE_LOCK, classify
from lab.wait import WaitTimeout, wait_for

# Captured from libvirt 9.0 / QEMU 7.2 on the local lab.
QEMU_WRITE = (
    "internal error: process exited while connecting to monitor: 2026-11-23T22:15:04"
    '.649038Z qemu-system-x86_64: -blockdev {"node-name":"libvirt-1-format"}: Failed '
    'to get "write" lock\nIs another process using the image [/l/one.qcow2]?'
)
QEMU_SHARED = (
    "internal error: qemu unexpectedly closed the monitor: qemu-system-x86_64: "
    '-blockdev {...}: Failed to get shared "write" lock'
)
LOCKMGR = "resource busy: disk /l/one.qcow2 is locked exclusively by vm-1 on node-a"
NOT_QUORATE = (
    "internal error: Process exited prior to exec: dlm: lockspace libvirt on node-a cannot be "
    "used: node-a is not quorate (since 04:14:02); starts are refused until quorum returns: "
    "check `corosync-quorumtool -s`"
)
DOWN = (
    "operation failed: virtdlmd is not running (socket /run/libvirt/virtdlmd.sock: "
    "No such file or directory)"
)


@pytest.mark.parametrize(
    ("text", "code", "layer", "holder"),
    [
        (QEMU_WRITE, 1, QEMU_IMAGE_LOCK, ""),
        (QEMU_SHARED, 1, QEMU_IMAGE_LOCK, ""),
        (LOCKMGR, libvirt.VIR_ERR_RESOURCE_BUSY, LOCK_MANAGER, "vm-1@node-a"),
        (NOT_QUORATE, 1, LOCK_MANAGER, ""),
        (DOWN, 9, LOCK_DAEMON_DOWN, ""),
        ("internal error: no such file", 1, OTHER, ""),
    ],
    ids=["qemu-write", "qemu-shared", "lock-manager", "lockspace-unusable", "daemon-down", "other"],
)
def test_classify(text: str, code: int, layer: str, holder: str) -> None:
    r = classify(text, code)
    assert (r.layer, r.code) == (layer, code)
    assert (f"{r.holder_domain}@{r.holder_node}" if r.holder_domain else "") == holder


def test_lock_manager_refusal_without_code_gets_87() -> None:
    assert classify(LOCKMGR).code == libvirt.VIR_ERR_RESOURCE_BUSY


def test_double_writers_sees_two_rw_domains_on_one_disk() -> None:
    a = domain_xml(DomainSpec("a", (Disk("/i/one.qcow2"), Disk("/i/s.raw", shareable=True))))
    b = domain_xml(DomainSpec("b", (Disk("/i/one.qcow2"),)))
    c = domain_xml(
        DomainSpec("c", (Disk("/i/one.qcow2", readonly=True), Disk("/i/s.raw", shareable=True)))
    )
    assert rw_exclusive_disks(a) == ["/i/one.qcow2"]
    assert double_writers({"n/a": a, "n/c": c}) == {}
    assert double_writers({"n/a": a, "n/b": b}) == {"/i/one.qcow2": ["n/a", "n/b"]}


def test_domain_xml_carries_disk_flags_and_leases() -> None:
    spec = DomainSpec(
        "vm-1",
        (Disk("/i/a b.raw", readonly=True), Disk("/i/s.raw", shareable=True)),
        (Lease("ls", "k", "/i/leases"),),
    )
    root = ET.fromstring(domain_xml(spec))
    disks = root.findall("./devices/disk")
    assert disks[0].find("source").get("file") == "/i/a b.raw"
    assert disks[0].find("readonly") is not None and disks[1].find("shareable") is not None
    assert disks[1].find("driver").get("cache") == "none"
    assert root.find("./devices/lease/key").text == "k"
    assert [d.find("target").get("dev") for d in disks] == ["vda", "vdb"]


def test_a_dev_path_is_a_block_disk_and_the_audit_sees_it() -> None:
    part = "/dev/disk/by-id/virtio-virtdlm-shared-part1"
    xml = domain_xml(DomainSpec("vm-1", (Disk(part),)))
    disk = ET.fromstring(xml).find("./devices/disk")
    assert disk.get("type") == "block" and disk.find("source").get("dev") == part
    assert disk.find("driver").get("type") == "raw"
    other = domain_xml(DomainSpec("vm-2", (Disk(part),)))
    assert double_writers({"a/vm-1": xml, "b/vm-2": other}) == {part: ["a/vm-1", "b/vm-2"]}


def test_log_watch_reports_only_new_bad_lines(tmp_path: object) -> None:
    path = f"{tmp_path}/d.log"
    with open(path, "w") as f:
        f.write("x ERROR old\n")
    watch = LogWatch(path, allow=["expected"]).arm()
    with open(path, "a") as f:
        f.write(
            "x INFO fine\nx ERROR expected thing\nx ERROR new\nTraceback (most recent call last):\n"
        )
    assert watch.bad_lines() == ["x ERROR new", "Traceback (most recent call last):"]


def test_wait_for_returns_value_or_names_what_it_waited_for() -> None:
    t0 = time.monotonic()
    assert wait_for(lambda: time.monotonic() - t0 > 0.05 and "done", 2, 0.01) == "done"
    with pytest.raises(WaitTimeout, match=r"waited 0.1 s for the moon; last seen: False"):
        wait_for(lambda: False, 0.1, 0.02, "the moon")


def test_commands_have_timeouts_and_strictness() -> None:
    assert run(["sh", "-c", "exit 3"]).rc == 3
    with pytest.raises(CommandFailed, match="rc 3"):
        check(["sh", "-c", "echo oops >&2; exit 3"])
    with pytest.raises(CommandTimeout, match="did not finish in 0 s"):
        run(["sleep", "5"], timeout_s=0.2)


def test_a_command_that_cannot_start_says_why_in_the_os_words() -> None:
    with pytest.raises(
        CommandNotStarted, match=r"no-such-tool --version: cannot start it: .*No such file"
    ):
        run(["no-such-tool", "--version"])


def test_the_local_labs_qemu_conf_names_its_lock_manager() -> None:
    files = config_files("lockd")
    assert 'lock_manager = "lockd"\n' in files["etc/qemu.conf"]
    assert 'backend = "model"\n' in files["etc/qemu-dlm.conf"]
    assert all(text.endswith("\n") for text in files.values())


def test_a_timeout_also_ends_the_commands_children() -> None:
    started = time.monotonic()
    with pytest.raises(CommandTimeout, match="last output: 'started'"):
        run(["sh", "-c", "echo started; sleep 30 & sleep 30"], timeout_s=0.5)
    assert time.monotonic() - started < 10  # the grandchild held the pipe: it was killed too


def test_a_long_steps_progress_reaches_the_terminal_while_stdout_is_its_result(
    capfd: pytest.CaptureFixture[str],
) -> None:
    out = check(["sh", "-c", "echo '[box 0s] step one' >&2; echo /the/box"], show_progress=True)
    assert out.stdout == "/the/box\n" and out.stderr == ""
    assert "[box 0s] step one" in capfd.readouterr().err
    with pytest.raises(CommandFailed, match="rc 2"):
        check(["sh", "-c", "echo 'build-box: debootstrap failed' >&2; exit 2"], show_progress=True)
    assert "debootstrap failed" in capfd.readouterr().err  # shown as it happened


def test_the_shared_disk_gets_two_aligned_halves() -> None:
    import struct

    from lab.provision.mbr import two_halves

    mbr = two_halves(2 * 1024 * 1024)  # 1 GiB in sectors
    assert len(mbr) == 512 and mbr[510:] == b"\x55\xaa"
    (_, _, t1, _, lba1, n1), (_, _, t2, _, lba2, n2) = (
        struct.unpack("<B3sB3sII", mbr[446 + 16 * i : 462 + 16 * i]) for i in (0, 1)
    )
    assert (t1, t2) == (0x83, 0x83) and lba1 == 2048 and lba2 == lba1 + n1 and n1 == n2
    assert lba2 % 2048 == 0 and lba2 + n2 <= 2 * 1024 * 1024
