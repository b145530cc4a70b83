"""Hold one lock in a separate process until killed (to make orphans in contract tests).

    backend_holder.py SPEC RESOURCE MODE PERSISTENT(0|1)

SPEC is "model:<model server socket>" or "libdlm:<lockspace>". Prints "held" once granted.
"""

import sys
import time

from virtdlm.backends.base import LockFlags, Mode

HOLD_LIMIT_S = 600


def main() -> int:
    spec, resource, mode, persistent = sys.argv[1:5]
    kind, arg = spec.split(":", 1)
    if kind == "model":
        from virtdlm.backends.model_server import RemoteModelBackend

        backend = RemoteModelBackend(arg, node_id=1)
    else:
        from virtdlm.backends.libdlm import LibDlmBackend

        backend = LibDlmBackend(arg)
    flags = LockFlags.NOQUEUE | (LockFlags.PERSISTENT if persistent == "1" else LockFlags.NONE)
    lkid, _ = backend.lock(resource, Mode.NL, LockFlags.EXPEDITE)
    backend.convert(lkid, Mode[mode], flags)
    print("held", flush=True)
    time.sleep(HOLD_LIMIT_S)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
