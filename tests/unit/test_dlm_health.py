"""The libdlm backend's health probe without a kernel DLM: its parsers on captured text, and the
probe over a stand-in sysfs directory and /proc entry for dlm_controld.

The `dlm_tool status` samples follow dlm's libdlmcontrol (dlmc_print_status: "cluster nodeid
.. quorate ..", "daemon now ..", then one "fence <nodeid> <reason> pid|delay .. fail <walltime>
fence <walltime> now <t>" line per node that awaits fencing, then "node .." lines).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from virtdlm.backends import dlm_health
from virtdlm.backends.dlm_health import DlmHealthProbe, parse_fencing, parse_quorum

STATUS_HEALTHY = """\
cluster nodeid 1 quorate 1 ring seq 12 12
daemon now 4711 fence_pid 0 
node 1 M add 17 rem 0 fail 0 fence 0 at 0 0
node 2 M add 20 rem 0 fail 0 fence 0 at 0 0
"""
STATUS_FENCING = """\
cluster nodeid 2 quorate 1 ring seq 16 16
daemon now 5200 fence_pid 3142 
fence 1 nodedown pid 3142 actor 2 fail 1764513727 fence 0 now 1764513790
node 1 X add 17 rem 5120 fail 5120 fence 0 at 0 0
node 2 M add 20 rem 0 fail 0 fence 0 at 0 0
"""
STATUS_DELAYED = """\
cluster nodeid 2 quorate 1 ring seq 16 16
daemon now 5200 fence_pid 0 
fence 3 nodedown delay actor 2 fail 1764513727 fence 0 now 1764513790 result_wait
"""
STATUS_NO_DATA = "cluster nodeid 2 quorate 1 ring seq 16 16\nfence 4 no data\n"


@pytest.mark.parametrize(
    ("output", "what", "since"),
    [
        (STATUS_HEALTHY, "", None),
        (STATUS_FENCING, "waiting for fencing of node 1 (nodedown)", 1764513727.0),
        (STATUS_DELAYED, "waiting for fencing of node 3 (nodedown)", 1764513727.0),
        (STATUS_NO_DATA, "waiting for fencing of node 4", None),
        ("cannot connect to dlm_controld\n", "", None),
    ],
    ids=["healthy", "fence pending", "fence delayed", "no data", "no dlm_controld"],
)
def test_dlm_tool_status_tells_a_pending_fence(output: str, what: str, since: float | None) -> None:
    assert parse_fencing(output) == (what, since)


@pytest.mark.parametrize(
    ("rc", "output", "quorate", "detail"),
    [
        (0, "Quorate:          Yes\n", True, "corosync-quorumtool: quorate"),
        (2, "Quorate:          No\n", False, "corosync-quorumtool: not quorate"),
        (1, "Cannot initialize QUORUM service\n", None,
         "corosync-quorumtool exited 1: Cannot initialize QUORUM service"),
        (None, "corosync-quorumtool is not installed", None,
         "corosync-quorumtool exited None: corosync-quorumtool is not installed"),
    ],
    ids=["quorate", "not quorate", "no corosync", "not installed"],
)  # fmt: skip
def test_corosync_quorumtool_exit_code_tells_quorum(
    rc: int | None, output: str, quorate: bool | None, detail: str
) -> None:
    assert parse_quorum(rc, output) == (quorate, detail)


def test_a_tool_that_hangs_is_given_up_at_its_deadline() -> None:
    rc, text = dlm_health.run_tool(("sleep", "10"), timeout_s=0.2)
    assert (rc, text) == (None, "sleep 10 did not answer in 0.2 s")
    assert dlm_health.run_tool(("no-such-tool-xyz",)) == (None, "no-such-tool-xyz is not installed")


@pytest.fixture
def controld(short_dir: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A process standing in for dlm_controld, named so in a stand-in /proc (its comm)."""
    proc_dir = os.path.join(short_dir, "proc")
    with subprocess.Popen(["sleep", "60"]) as stand_in:
        os.makedirs(os.path.join(proc_dir, str(stand_in.pid)))
        with open(os.path.join(proc_dir, str(stand_in.pid), "comm"), "w") as f:
            f.write("dlm_controld\n")
        try:
            yield proc_dir, stand_in
        finally:
            stand_in.kill()


def test_the_probe_sees_dlm_controld_go_and_the_lockspace_go(
    short_dir: str, controld: tuple[str, subprocess.Popen[bytes]]
) -> None:
    proc_dir, stand_in = controld
    sysfs = os.path.join(short_dir, "sysfs")
    os.makedirs(os.path.join(sysfs, "libvirt"))
    probe = DlmHealthProbe("libvirt", sysfs=sysfs, proc=proc_dir)
    assert probe.read().lockspace == "ok"
    stand_in.kill()
    stand_in.wait()
    reading = probe.read()
    assert reading.lockspace == "stopped"
    assert reading.lockspace_detail == f"dlm_controld (pid {stand_in.pid}) is not running"
    assert reading.lockspace_since is not None
    with subprocess.Popen(["sleep", "60"]) as new:  # a new dlm_controld restarts nothing
        try:
            os.makedirs(os.path.join(proc_dir, str(new.pid)))
            with open(os.path.join(proc_dir, str(new.pid), "comm"), "w") as f:
                f.write("dlm_controld\n")
            again = probe.read()
            assert (again.lockspace, again.lockspace_since) == ("stopped", reading.lockspace_since)
        finally:
            new.kill()
    os.rmdir(os.path.join(sysfs, "libvirt"))
    gone = probe.read()
    assert gone.lockspace == "gone"
    assert gone.lockspace_detail == (
        f"{sysfs}/libvirt is missing: this node is no longer in the lockspace"
    )


def test_a_restarted_dlm_controld_is_named_in_the_detail(
    short_dir: str, controld: tuple[str, subprocess.Popen[bytes]]
) -> None:
    proc_dir, stand_in = controld
    sysfs = os.path.join(short_dir, "sysfs")
    os.makedirs(os.path.join(sysfs, "libvirt"))
    probe = DlmHealthProbe("libvirt", sysfs=sysfs, proc=proc_dir)
    stand_in.kill()
    stand_in.wait()
    with subprocess.Popen(["sleep", "60"]) as new:
        try:
            os.makedirs(os.path.join(proc_dir, str(new.pid)))
            with open(os.path.join(proc_dir, str(new.pid), "comm"), "w") as f:
                f.write("dlm_controld\n")
            reading = probe.read()
        finally:
            new.kill()
    assert reading.lockspace == "stopped"
    assert reading.lockspace_detail.startswith(
        f"dlm_controld (pid {stand_in.pid}) exited and pid {new.pid} runs now; the kernel "
        "stopped the lockspace"
    )
