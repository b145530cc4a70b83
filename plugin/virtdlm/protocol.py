"""The virtdlmd wire protocol, version 1: framing, limits, frame readers, requests.

Everything that touches the wire lives here: encoding a frame, the two frame readers (the
blocking ``recv_frame`` of the client and the model server, the asyncio ``read_frame`` of
the daemon), validating a request and building one. The contract is docs/protocol.md; keep
the two in step. The C driver keeps its own copy of the limits (plugin/driver/).
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import struct
from dataclasses import dataclass, field
from typing import Any

from .errors import ErrorCode, InvalidRequest, ProtocolError, UnsupportedVersion, VirtDlmError

PROTOCOL_VERSION = 1
HEADER = struct.Struct(">I")
MAX_FRAME_BYTES = 65536
MAX_RESOURCES_PER_REQUEST = 256
MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 256
MAX_PID = 4194304

OWNER_OPS = frozenset({"register", "acquire", "release", "inquire"})
ACTION_OPS = frozenset({"register", "acquire"})  # the ops that carry the owner's action
QUERY_OPS = frozenset({"status", "locks"})
OPS = OWNER_OPS | QUERY_OPS

# on_lockfailure, as libvirt's virDomainLockFailureAction names it (0..4, in this order);
# "default" is poweroff, as with sanlock (virtdlm.lockfailure).
ACTIONS = ("default", "poweroff", "restart", "pause", "ignore")
DEFAULT_ACTION = "default"

_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def encode_frame(message: dict[str, Any]) -> bytes:
    """One frame: 4-byte big-endian length, then compact UTF-8 JSON."""
    body = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
    if len(body) > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame of {len(body)} bytes exceeds {MAX_FRAME_BYTES}")
    return HEADER.pack(len(body)) + body


def frame_length(header: bytes) -> int:
    """Validate a frame header and return the body length it announces."""
    if len(header) != HEADER.size:
        raise ProtocolError(f"truncated frame header ({len(header)} of {HEADER.size} bytes)")
    (length,) = HEADER.unpack(header)
    if length == 0 or length > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame length {length} outside 1..{MAX_FRAME_BYTES}")
    return int(length)


def decode_body(body: bytes) -> dict[str, Any]:
    """Parse a frame body into a JSON object."""
    try:
        message = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ProtocolError(f"frame is not UTF-8 JSON: {err}") from err
    if not isinstance(message, dict):
        raise ProtocolError(f"frame holds a JSON {type(message).__name__}, not an object")
    return message


def recv_frame(sock: socket.socket) -> dict[str, Any] | None:
    """Read one frame from a blocking socket; None on a clean EOF before a header."""
    header = _recv_exact(sock, HEADER.size, eof_ok=True)
    if header is None:
        return None
    body = _recv_exact(sock, frame_length(header), eof_ok=False)
    assert body is not None
    return decode_body(body)


def _recv_exact(sock: socket.socket, size: int, eof_ok: bool) -> bytes | None:
    chunks, got = [], 0
    while got < size:
        chunk = sock.recv(size - got)
        if not chunk:
            if eof_ok and got == 0:
                return None
            raise ProtocolError(f"connection closed after {got} of {size} bytes")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


async def read_frame(
    reader: asyncio.StreamReader, idle_timeout_s: float | None, body_timeout_s: float
) -> dict[str, Any] | None:
    """Read one frame from an asyncio stream. None on EOF before a header, or when no
    header came within idle_timeout_s (None: wait for ever); a body must follow its header
    within body_timeout_s."""
    try:
        async with asyncio.timeout(idle_timeout_s):
            header = await reader.readexactly(HEADER.size)
    except asyncio.IncompleteReadError as err:
        header = err.partial
    except TimeoutError:
        return None
    if not header:
        return None
    length = frame_length(header)
    try:
        async with asyncio.timeout(body_timeout_s):
            body = await reader.readexactly(length)
    except asyncio.IncompleteReadError as err:
        raise ProtocolError(f"truncated frame: {len(err.partial)} of {length} bytes") from err
    except TimeoutError as err:
        raise ProtocolError(
            f"frame body of {length} bytes not received in {body_timeout_s:.0f} s"
        ) from err
    return decode_body(body)


def ok_reply(**fields: Any) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "ok": True, **fields}


def error_reply(err: VirtDlmError) -> dict[str, Any]:
    from .errors import Busy

    reply: dict[str, Any] = {
        "v": PROTOCOL_VERSION,
        "ok": False,
        "code": int(err.code),
        "error": ErrorCode(err.code).name,
        "message": str(err) or type(err).__name__,
    }
    if isinstance(err, Busy):
        reply["resource"] = err.resource
        if err.holder is not None:
            h = err.holder
            reply["holder"] = {"domain": h.domain, "node": h.node, "mode": h.mode}
    return reply


@dataclass(frozen=True)
class OwnerSpec:
    """The owner as the client describes it: a QEMU process of a domain."""

    uuid: str
    name: str
    id: int
    pid: int


@dataclass(frozen=True)
class DiskSpec:
    path: str
    readonly: bool
    shared: bool


@dataclass(frozen=True)
class LeaseSpec:
    key: str
    lockspace: str
    path: str
    offset: int


ResourceSpec = DiskSpec | LeaseSpec


@dataclass(frozen=True)
class Request:
    op: str
    owner: OwnerSpec | None = None
    resources: tuple[ResourceSpec, ...] = field(default_factory=tuple)
    restrict: bool = False
    action: str = DEFAULT_ACTION  # register, acquire: what to do with the domain on lock loss


def _check_keys(obj: dict[str, Any], allowed: set[str], required: set[str], what: str) -> None:
    unknown = set(obj) - allowed
    if unknown:
        raise InvalidRequest(f"{what}: unknown field(s) {', '.join(sorted(unknown))}")
    missing = required - set(obj)
    if missing:
        raise InvalidRequest(f"{what}: missing field(s) {', '.join(sorted(missing))}")


def _string(obj: dict[str, Any], key: str, what: str, limit: int, empty_ok: bool = False) -> str:
    value = obj[key]
    if not isinstance(value, str):
        raise InvalidRequest(f"{what}.{key} must be a string")
    size = len(value.encode())
    if size > limit:
        raise InvalidRequest(f"{what}.{key} is {size} bytes, over the limit of {limit}")
    if not value and not empty_ok:
        raise InvalidRequest(f"{what}.{key} must not be empty")
    if "\x00" in value:
        raise InvalidRequest(f"{what}.{key} contains a NUL byte")
    return value


def _int(obj: dict[str, Any], key: str, what: str, low: int, high: int) -> int:
    value = obj[key]
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidRequest(f"{what}.{key} must be an integer in {low}..{high}")
    return value


def _bool(obj: dict[str, Any], key: str, what: str) -> bool:
    value = obj[key]
    if not isinstance(value, bool):
        raise InvalidRequest(f"{what}.{key} must be true or false")
    return value


def _parse_owner(raw: Any) -> OwnerSpec:
    if not isinstance(raw, dict):
        raise InvalidRequest("owner must be an object")
    _check_keys(raw, {"uuid", "name", "id", "pid"}, {"uuid", "name", "pid"}, "owner")
    uuid = _string(raw, "uuid", "owner", 36).lower()
    if not _UUID_RE.match(uuid):
        raise InvalidRequest(f"owner.uuid {uuid!r} is not a UUID")
    return OwnerSpec(
        uuid=uuid,
        name=_string(raw, "name", "owner", MAX_NAME_BYTES),
        id=_int(raw, "id", "owner", -1, 2**32 - 1) if "id" in raw else -1,
        pid=_int(raw, "pid", "owner", 1, MAX_PID),
    )


def _parse_resource(raw: Any, index: int) -> ResourceSpec:
    what = f"resources[{index}]"
    if not isinstance(raw, dict) or "type" not in raw:
        raise InvalidRequest(f"{what} must be an object with a type")
    kind = raw["type"]
    if kind == "disk":
        _check_keys(raw, {"type", "path", "readonly", "shared"}, {"type", "path"}, what)
        path = _string(raw, "path", what, MAX_PATH_BYTES)
        if not path.startswith("/"):
            raise InvalidRequest(f"{what}.path {path!r} is not absolute")
        readonly = _bool(raw, "readonly", what) if "readonly" in raw else False
        shared = _bool(raw, "shared", what) if "shared" in raw else False
        return DiskSpec(path=path, readonly=readonly, shared=shared)
    if kind == "lease":
        _check_keys(raw, {"type", "key", "lockspace", "path", "offset"}, {"type", "key"}, what)
        return LeaseSpec(
            key=_string(raw, "key", what, MAX_NAME_BYTES),
            lockspace=_string(raw, "lockspace", what, MAX_NAME_BYTES, True)
            if "lockspace" in raw
            else "",
            path=_string(raw, "path", what, MAX_PATH_BYTES, True) if "path" in raw else "",
            offset=_int(raw, "offset", what, 0, 2**63 - 1) if "offset" in raw else 0,
        )
    raise InvalidRequest(f"{what}.type {kind!r} is not 'disk' or 'lease'")


def parse_request(message: dict[str, Any]) -> Request:
    """Validate a decoded frame as a request; unknown versions, ops and keys are refused."""
    version = message.get("v")
    if version != PROTOCOL_VERSION:
        raise UnsupportedVersion(
            f"protocol version {version!r} is not supported (this daemon speaks {PROTOCOL_VERSION})"
        )
    op = message.get("op")
    if op not in OPS:
        raise InvalidRequest(f"unknown op {op!r}; expected one of {', '.join(sorted(OPS))}")
    if op in QUERY_OPS:
        _check_keys(message, {"v", "op"}, {"v", "op"}, op)
        return Request(op=op)
    allowed = {"v", "op", "owner", "resources"} | ({"restrict"} if op == "register" else set())
    allowed |= {"action"} if op in ACTION_OPS else set()
    _check_keys(message, allowed, {"v", "op", "owner"}, op)
    raw_resources = message.get("resources", [])
    if not isinstance(raw_resources, list):
        raise InvalidRequest("resources must be a list")
    if len(raw_resources) > MAX_RESOURCES_PER_REQUEST:
        raise InvalidRequest(
            f"{len(raw_resources)} resources in one request, over the limit of "
            f"{MAX_RESOURCES_PER_REQUEST}"
        )
    restrict = _bool(message, "restrict", op) if "restrict" in message else False
    return Request(
        op=op,
        owner=_parse_owner(message["owner"]),
        resources=parse_resources(raw_resources),
        restrict=restrict,
        action=_action(message, op) if "action" in message else DEFAULT_ACTION,
    )


def _action(message: dict[str, Any], op: str) -> str:
    value = message["action"]
    if value not in ACTIONS:
        raise InvalidRequest(
            f"{op}.action {value!r} is not one of {', '.join(ACTIONS)} (libvirt's on_lockfailure)"
        )
    return str(value)


def parse_resources(raw: list[Any]) -> tuple[ResourceSpec, ...]:
    """Validate the wire form of a request's resources."""
    return tuple(_parse_resource(r, i) for i, r in enumerate(raw))


def request_message(request: Request) -> dict[str, Any]:
    """The inverse of parse_request: build the wire form of a request (client side)."""
    message: dict[str, Any] = {"v": PROTOCOL_VERSION, "op": request.op}
    if request.owner is not None:
        o = request.owner
        message["owner"] = {"uuid": o.uuid, "name": o.name, "id": o.id, "pid": o.pid}
        message["resources"] = [resource_message(r) for r in request.resources]
    if request.op == "register":
        message["restrict"] = request.restrict
    if request.op in ACTION_OPS:
        message["action"] = request.action
    return message


def resource_message(resource: ResourceSpec) -> dict[str, Any]:
    """The wire form of one resource (the inverse of parse_resources, per item)."""
    r = resource
    if isinstance(r, DiskSpec):
        return {"type": "disk", "path": r.path, "readonly": r.readonly, "shared": r.shared}
    return {
        "type": "lease",
        "key": r.key,
        "lockspace": r.lockspace,
        "path": r.path,
        "offset": r.offset,
    }
