"""The libdlm cffi declarations against the installed libdlm_lt.so.3 (no kernel DLM needed).

The behaviour of the backend on a real DLM is the contract suite's job, run in a lab node.
"""

from __future__ import annotations

import os

import pytest

cffi = pytest.importorskip("cffi")
from virtdlm.backends import libdlm  # noqa: E402
from virtdlm.errors import BackendUnavailable  # noqa: E402

LIB_PATHS = ["/usr/lib/x86_64-linux-gnu/libdlm_lt.so.3", "/usr/lib64/libdlm_lt.so.3"]
needs_lib = pytest.mark.skipif(
    not any(os.path.exists(p) for p in LIB_PATHS), reason="libdlm3 is not installed"
)


@needs_lib
def test_declarations_match_the_library() -> None:
    ffi = cffi.FFI()
    ffi.cdef(libdlm._CDEF)
    lib = ffi.dlopen(libdlm.LIBRARY)
    for symbol in (
        "dlm_open_lockspace",
        "dlm_new_lockspace",
        "dlm_close_lockspace",
        "dlm_ls_lock_wait",
        "dlm_ls_lockx",
        "dlm_ls_unlock_wait",
        "dlm_ls_purge",
    ):
        assert getattr(lib, symbol) is not None
    # libdlm.h: int sb_status; uint32_t sb_lkid; char sb_flags; char *sb_lvbptr
    assert ffi.sizeof("struct dlm_lksb") == 24
    assert ffi.offsetof("struct dlm_lksb", "sb_lvbptr") == 16


@needs_lib
@pytest.mark.skipif(os.path.exists(libdlm.DLM_CONTROL_DEVICE), reason="a DLM is running here")
def test_without_a_kernel_dlm_construction_fails_and_says_what_to_start() -> None:
    with pytest.raises(BackendUnavailable) as info:
        libdlm.LibDlmBackend("libvirt")
    assert "dlm-control is missing" in str(info.value)
    assert "systemctl start dlm" in str(info.value)


def test_local_node_id_from_configfs(tmp_path: os.PathLike[str]) -> None:
    for node, local in ((1, "0"), (2, "1")):
        comm = os.path.join(tmp_path, f"10.0.0.{node}")
        os.makedirs(comm)
        with open(os.path.join(comm, "nodeid"), "w") as f:
            f.write(f"{node}\n")
        with open(os.path.join(comm, "local"), "w") as f:
            f.write(f"{local}\n")
    assert libdlm.local_node_id(str(tmp_path)) == 2
    assert libdlm.local_node_id(os.path.join(tmp_path, "absent")) == 0
