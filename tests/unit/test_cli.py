"""virtdlm status / locks against a real daemon, and when the daemon is down (item 9)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable

from .conftest import disk
from .procs import DaemonProc, FakeQemu, _env

CLI_TIMEOUT_S = 30


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "virtdlm.cli", *args],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
    )


def test_status_json(daemon: DaemonProc) -> None:
    out = _cli("--socket", daemon.socket, "status", "--json")
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert status["backend"] == "model" and status["cluster"] is False
    assert status["warning"] == "model backend: single-host test model, NOT a cluster lock"
    assert (status["lockspace"], status["node_id"], status["node_name"]) == ("libvirt", 1, "node-a")
    assert status["owners"] == 0 and status["locks"] == 0 and status["uptime_s"] >= 0


def test_locks_json_and_table(
    daemon: DaemonProc, make_qemu: Callable[..., FakeQemu], images: dict[str, str]
) -> None:
    vm = make_qemu(daemon.socket, "vm-1", [disk(images["one.qcow2"])])
    assert daemon.send(vm.acquire_request())["ok"]
    out = _cli("--socket", daemon.socket, "locks", "--json")
    assert out.returncode == 0, out.stderr
    (lock,) = json.loads(out.stdout)
    assert {k: lock[k] for k in ("path", "mode", "domain", "pid", "node", "kind")} == {
        "path": images["one.qcow2"],
        "mode": "EX",
        "domain": "vm-1",
        "pid": vm.pid,
        "node": "node-a",
        "kind": "disk",
    }
    table = _cli("--socket", daemon.socket, "locks").stdout
    assert table.splitlines()[0].split()[:6] == ["MODE", "DOMAIN", "PID", "NODE", "KIND", "PATH"]
    assert f"EX    vm-1    {vm.pid}" in table


def test_daemon_down_is_a_clear_message_and_exit_2(short_dir: str) -> None:
    path = os.path.join(short_dir, "absent.sock")
    out = _cli("--socket", path, "status")
    assert out.returncode == 2
    assert out.stderr.startswith(f"virtdlm: virtdlmd is not running (socket {path}: ")
    assert "start it with" in out.stderr


def test_daemon_refuses_a_config_it_cannot_use(short_dir: str) -> None:
    conf = os.path.join(short_dir, "bad.conf")
    with open(conf, "w", encoding="utf-8") as f:
        f.write('backend = "model"\nlockspace_name = "has space"\n')
    out = subprocess.run(
        [sys.executable, "-m", "virtdlm.daemon", "--config", conf],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
    )
    assert out.returncode == 2
    assert f"{conf}:2: lockspace_name 'has space' must be" in out.stderr
