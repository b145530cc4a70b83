"""Stand-in for libvirt's pre-exec child turned QEMU: register, keep the socket, idle.

    fake_qemu.py SOCKET UUID NAME DISKS_JSON register|idle restrict|open [ACTION]

DISKS_JSON holds the resources in their wire form. Prints "ready" once registered (or at
once for "idle"), then sleeps until killed, holding the registration connection open the
way QEMU holds the fd it inherited. ACTION is the domain's on_lockfailure (default "default").
"""

import json
import os
import sys
import time

from virtdlm.client import Client
from virtdlm.errors import RemoteError
from virtdlm.protocol import OwnerSpec, parse_resources

IDLE_LIMIT_S = 600
REGISTER_TIMEOUT_S = 10


def main() -> int:
    path, uuid, name, disks, mode, restrict = sys.argv[1:7]
    action = sys.argv[7] if len(sys.argv) > 7 else "default"
    if mode == "register":
        client = Client(path, timeout_s=REGISTER_TIMEOUT_S)  # stays open until killed
        owner = OwnerSpec(uuid=uuid, name=name, id=1, pid=os.getpid())
        resources = parse_resources(json.loads(disks))
        try:
            client.register(owner, resources, restrict == "restrict", action)
        except RemoteError as err:
            print(f"refused {err}", flush=True)
            return 1
    print("ready", flush=True)
    time.sleep(IDLE_LIMIT_S)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
