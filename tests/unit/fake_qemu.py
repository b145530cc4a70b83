"""Stand-in for libvirt's pre-exec child turned QEMU: register, keep the socket, idle.

    fake_qemu.py SOCKET UUID NAME DISKS_JSON register|idle restrict|open

Prints "ready" once registered (or at once for "idle"), then sleeps until killed, holding
the registration connection open the way QEMU holds the fd it inherited.
"""

import json
import os
import socket
import struct
import sys
import time

IDLE_LIMIT_S = 600


def main() -> int:
    path, uuid, name, disks, mode, restrict = sys.argv[1:7]
    if mode == "register":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(path)
        body = json.dumps(
            {
                "v": 1,
                "op": "register",
                "restrict": restrict == "restrict",
                "owner": {"uuid": uuid, "name": name, "id": 1, "pid": os.getpid()},
                "resources": json.loads(disks),
            }
        ).encode()
        sock.sendall(struct.pack(">I", len(body)) + body)
        (length,) = struct.unpack(">I", sock.recv(4))
        reply = json.loads(sock.recv(length))
        if not reply.get("ok"):
            print(f"refused {reply}", flush=True)
            return 1
    print("ready", flush=True)
    time.sleep(IDLE_LIMIT_S)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
