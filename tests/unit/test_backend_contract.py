"""The backend contract: DLM semantics every backend must show, unchanged across backends.

Runs on the model (served to processes by the model server, so that a killed process leaves
orphans as with the kernel) always, and on libdlm where /dev/misc/dlm-control exists (inside
a lab node; `make test` runs it there). Set VIRTDLM_CONTRACT_BACKENDS=libdlm to choose.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from itertools import product

import pytest

from virtdlm.backends.base import (
    COMPATIBLE,
    EMPTY_LVB,
    LockBackend,
    LockFlags,
    Mode,
    decode_holder,
    encode_holder,
)
from virtdlm.errors import BackendError, LockBusy, OrphanNotFound

from .procs import ModelServerProc, _env

HOLDER = os.path.join(os.path.dirname(__file__), "backend_holder.py")
LIBDLM_LOCKSPACE = os.environ.get("VIRTDLM_CONTRACT_LOCKSPACE", "vdltest")
HOLDER_TIMEOUT_S = 30

P = LockFlags.PERSISTENT
NQ = LockFlags.NOQUEUE
VB = LockFlags.VALBLK


def _backends() -> list[str]:
    chosen = os.environ.get("VIRTDLM_CONTRACT_BACKENDS")
    if chosen:
        return chosen.split(",")
    names = ["model"]
    if os.path.exists("/dev/misc/dlm-control"):
        names.append("libdlm")
    return names


@pytest.fixture(scope="module", params=_backends())
def spec(request: pytest.FixtureRequest) -> Iterator[str]:
    """A backend spec string, understood by open_backend() and backend_holder.py."""
    if request.param == "model":
        directory = tempfile.mkdtemp(prefix="vdl-")
        server = ModelServerProc.start(directory)
        yield f"model:{server.socket}"
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
    else:
        yield f"libdlm:{LIBDLM_LOCKSPACE}"


def open_backend(spec: str) -> LockBackend:
    kind, arg = spec.split(":", 1)
    if kind == "model":
        from virtdlm.backends.model_server import RemoteModelBackend

        return RemoteModelBackend(arg, node_id=1)
    from virtdlm.backends.libdlm import LibDlmBackend

    return LibDlmBackend(arg)


@pytest.fixture
def backend(spec: str) -> Iterator[LockBackend]:
    b = open_backend(spec)
    yield b
    b.close()


@pytest.fixture
def name() -> Callable[[str], str]:
    """Unique resource names, so runs on a shared lockspace never collide."""
    run = uuid.uuid4().hex[:10]
    return lambda tag: f"t.{run}.{tag}"


@pytest.fixture
def holder(spec: str) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Another process holding a lock (then killed with -9 to make an orphan)."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(resource: str, mode: Mode, persistent: bool) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, HOLDER, spec, resource, mode.name, "1" if persistent else "0"],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdout is not None
        line = proc.stdout.readline().decode().strip()
        assert line == "held", f"holder failed: {line} {proc.stderr.read().decode()}"
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait(HOLDER_TIMEOUT_S)


def _kill9(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()
    proc.wait(HOLDER_TIMEOUT_S)


MODES = [m for m in Mode if m != Mode.NL]


@pytest.mark.parametrize(
    ("granted", "requested"),
    list(product(MODES, MODES)),
    ids=[f"{g.name}-then-{r.name}" for g, r in product(MODES, MODES)],
)
def test_compatibility_matrix_table_2_1(
    backend: LockBackend, name: Callable[[str], str], granted: Mode, requested: Mode
) -> None:
    res = name("compat")
    first, _ = backend.lock(res, granted, NQ)
    try:
        if COMPATIBLE[granted][requested]:
            second, _ = backend.lock(res, requested, NQ)
            backend.unlock(second)
        else:
            with pytest.raises(LockBusy) as info:
                backend.lock(res, requested, NQ)
            assert info.value.errno == 11  # EAGAIN: contention, not failure
    finally:
        backend.unlock(first)


def test_nl_then_convert_up_and_down(backend: LockBackend, name: Callable[[str], str]) -> None:
    res = name("convert")
    a, _ = backend.lock(res, Mode.NL, LockFlags.EXPEDITE)
    b, _ = backend.lock(res, Mode.NL, LockFlags.EXPEDITE)
    backend.convert(a, Mode.EX, NQ | P)
    with pytest.raises(LockBusy):
        backend.convert(b, Mode.PR, NQ | P)
    backend.convert(a, Mode.PR, NQ | P)  # down-convert EX -> PR
    backend.convert(b, Mode.PR, NQ | P)  # now compatible
    with pytest.raises(LockBusy):
        backend.convert(a, Mode.EX, NQ | P)  # up-convert blocked by b's PR
    backend.convert(b, Mode.NL, LockFlags.NONE)
    backend.convert(a, Mode.EX, NQ | P)
    backend.convert(a, Mode.EX, NQ | P)  # same-mode convert succeeds
    backend.unlock(a)
    backend.unlock(b)


def test_lvb_written_by_ex_holder_is_read_by_others(
    backend: LockBackend, name: Callable[[str], str]
) -> None:
    res = name("lvb")
    a, _ = backend.lock(res, Mode.NL, LockFlags.EXPEDITE)
    backend.convert(a, Mode.EX, NQ | P)
    published = encode_holder(Mode.EX, 7, "node-a", "vm-1")
    backend.convert(a, Mode.EX, NQ | P | VB, published)  # EX -> EX writes the LVB
    b, seen = backend.lock(res, Mode.NL, VB)
    assert seen == published
    assert decode_holder(seen) == (Mode.EX, 7, "node-a", "vm-1")
    assert backend.convert(b, Mode.NL, VB) == published  # NL -> NL reads it again
    backend.convert(a, Mode.NL, VB, EMPTY_LVB)  # EX -> NL writes (clears) it
    assert backend.convert(b, Mode.NL, VB) == EMPTY_LVB
    backend.unlock(a)
    backend.unlock(b)


def test_persistent_lock_of_killed_process_stays_granted_as_orphan(
    backend: LockBackend, holder: Callable[..., subprocess.Popen[bytes]], name: Callable[[str], str]
) -> None:
    res = name("orphan")
    _kill9(holder(res, Mode.EX, persistent=True))
    with pytest.raises(LockBusy):
        backend.lock(res, Mode.PR, NQ)
    with pytest.raises(LockBusy):  # the orphan is EX: adopting it as PR is refused
        backend.adopt(res, Mode.PR, P)
    lkid = backend.adopt(res, Mode.EX, P)
    with pytest.raises(OrphanNotFound):  # only one orphan, already adopted
        backend.adopt(res, Mode.EX, P)
    other, _ = backend.lock(res, Mode.NL, LockFlags.NONE)
    with pytest.raises(LockBusy):  # the adopted lock still excludes others
        backend.convert(other, Mode.PR, NQ)
    backend.convert(lkid, Mode.NL, LockFlags.NONE)
    backend.unlock(lkid)
    backend.convert(other, Mode.PR, NQ)
    backend.unlock(other)


def test_non_persistent_lock_goes_with_its_process(
    backend: LockBackend, holder: Callable[..., subprocess.Popen[bytes]], name: Callable[[str], str]
) -> None:
    res = name("transient")
    _kill9(holder(res, Mode.EX, persistent=False))
    lkid, _ = backend.lock(res, Mode.EX, NQ)
    backend.unlock(lkid)
    with pytest.raises(OrphanNotFound):
        backend.adopt(res, Mode.EX, P)


def test_purge_drops_this_nodes_orphans(
    backend: LockBackend, holder: Callable[..., subprocess.Popen[bytes]], name: Callable[[str], str]
) -> None:
    res = name("purge")
    _kill9(holder(res, Mode.EX, persistent=True))
    with pytest.raises(LockBusy):
        backend.lock(res, Mode.EX, NQ)
    backend.purge()
    lkid, _ = backend.lock(res, Mode.EX, NQ)
    backend.unlock(lkid)


def test_bad_requests_are_backend_errors_not_crashes(backend: LockBackend) -> None:
    with pytest.raises(BackendError):
        backend.lock("x" * 65, Mode.EX, NQ)  # over the 64-byte name limit
    with pytest.raises(BackendError):
        backend.unlock(0x7FFFFFF0)  # never granted
