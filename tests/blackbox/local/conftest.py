"""Fixtures of the local tier: a private libvirtd with the dlm lock manager on this host.

The lab comes up once per session (``make check`` or ``make test``) and goes away at the
end, leaving no process, domain or mount behind. The thesis VMs are writer guests that
really write their disks (lab.guest.writer). After every test the audits run: no two
running domains write one disk (in libvirt's view, and by what the writers left on the
disks), all domains are removed, every lock is gone within a second, the daemons are
alive, and virtdlmd's log shows no unexpected ERROR or Traceback.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

import virtdlm.client
from lab.command import check
from lab.guest import disks
from lab.local import LocalLab, default_root
from lab.settings import REPO
from lab.suite import data
from lab.suite.audit import LogWatch, double_writers
from lab.suite.matrix import IMAGES, image_storage, thesis_vms
from lab.virt.domain import Disk, DomainSpec
from lab.virt.hypervisor import Hypervisor
from lab.wait import wait_for

RELEASE_DEADLINE_S = 1.0  # on one host: a dead QEMU's locks are free within this
LOCKS_TIMEOUT_S = 10.0
MATRIX: list[dict[str, str]] = []  # table 5-1 rows as measured, for the summary


@pytest.fixture(scope="session")
def lab() -> Iterator[LocalLab]:
    lab = LocalLab(os.environ.get("VIRTDLM_LOCAL_LAB", default_root()), "dlm")
    lab.start()
    yield lab
    lab.stop()


@pytest.fixture(scope="session")
def hv(lab: LocalLab) -> Iterator[Hypervisor]:
    hv = Hypervisor(lab.uri)
    yield hv
    hv.close()


@pytest.fixture(scope="session")
def images(lab: LocalLab) -> dict[str, str]:
    """The thesis's images (lab.suite.matrix.IMAGES) by file name: one.qcow2, ..."""
    out = {}
    for image in IMAGES.values():
        path = os.path.join(lab.images, image.file)
        if not os.path.exists(path):
            check(["qemu-img", "create", "-q", "-f", image.format, path, image.size], timeout_s=30)
        out[image.file] = path
    return out


@pytest.fixture(scope="session")
def vms(
    request: pytest.FixtureRequest, lab: LocalLab, images: dict[str, str]
) -> dict[str, DomainSpec]:
    """vm-1..vm-4 of the thesis (lab.suite.matrix) on those images, as writer guests
    (lab.guest.writer) unless --no-writers."""
    boot = ""
    if request.config.getoption("writers"):
        boot = os.path.join(REPO, "build", "writer-boot.img")
        if not os.path.exists(boot):
            pytest.fail(f"{boot} is missing: run 'make guest' first")
    return thesis_vms(image_storage("local", lab.images), writer_boot=boot)


def locks(lab: LocalLab) -> list[dict[str, Any]]:
    return virtdlm.client.locks(lab.dlm_socket, LOCKS_TIMEOUT_S)


def held(lab: LocalLab) -> set[tuple[str, str, str]]:
    """{(domain, image file name, mode)} of every lock virtdlmd holds."""
    return {(lk["domain"], os.path.basename(lk["path"]), lk["mode"]) for lk in locks(lab)}


@pytest.fixture(autouse=True)
def audit(request: pytest.FixtureRequest, lab: LocalLab, hv: Hypervisor) -> Iterator[LogWatch]:
    marker = request.node.get_closest_marker("allow_log")
    watch = LogWatch(
        os.path.join(lab.logs, "virtdlmd.log"), list(marker.args) if marker else []
    ).arm()
    yield watch
    running = {}
    for name in hv.names():
        if hv.is_running(name):
            running[f"local/{name}"] = hv.call("xml", hv.lookup(name).XMLDesc, 0)
    try:
        doubles = double_writers(running)
        # What the writer guests left on their exclusive disks (lab.suite.data).
        data.audit(read_here, running, doubles, request.node.name)
        assert doubles == {}, "two running domains write one disk"
    finally:
        hv.remove_all()
    for image in IMAGES.values():  # nobody runs now: the next test starts from clean disks
        path = os.path.join(lab.images, image.file)
        if os.path.exists(path):
            disks.wipe(path)
    wait_for(
        lambda: locks(lab) == [],
        RELEASE_DEADLINE_S,
        0.05,
        "every lock released once the test's domains are gone",
    )
    assert lab.pid_of("virtdlmd") is not None, "virtdlmd died"
    assert lab.pid_of("libvirtd") is not None, "libvirtd died"
    bad = watch.bad_lines()
    assert not bad, "unexpected lines in virtdlmd's log:\n" + "\n".join(bad)


def read_here(paths: list[str]) -> list[disks.Evidence]:
    return [disks.evidence(path) for path in paths]


def spec(name: str, *disks: Disk, **kw: Any) -> DomainSpec:
    return DomainSpec(name, tuple(disks), **kw)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not MATRIX:
        return
    tr = terminalreporter
    tr.section("thesis table 5-1 on one host: expected in 2018 vs measured today")
    tr.write_line(f"{'row':<6} {'thesis (QEMU 2.8)':<64} {'measured':<16} {'code':<5} seconds")
    for r in MATRIX:
        tr.write_line(
            f"{r['row']:<6} {r['thesis']:<64} {r['measured']:<16} {r['code']:<5} {r['seconds']}"
        )
        if r["why"]:
            tr.write_line(f"{'':<6} why: {r['why']}")
