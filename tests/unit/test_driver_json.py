"""Fuzzing the C driver's JSON writer and reply scanner (plugin/driver/json.c) with hypothesis.

json.c is built with plugin/driver/fuzz/json_shim.c into a test library (never dlm.so) and
driven through ctypes. Properties: the scanner survives any bytes, accepts only JSON objects,
reads what virtdlmd writes exactly; the writer's frames are byte for byte what a Python mirror
of its escaping rules gives, and what virtdlmd's own parser reads as the request meant.

Knobs (environment): VDL_FUZZ_EXAMPLES (examples per property, default 100) and
VDL_FUZZ_SANITIZE (-fsanitize= list for the test build, default "undefined"; with "address"
run pytest under LD_PRELOAD=$(cc -print-file-name=libasan.so) and
ASAN_OPTIONS=detect_leaks=0:log_path=/tmp/vdl-asan, since pytest's capture swallows the report).
Over ~400 lines because the Python mirrors of the writer's escaping and of the reply grammar
live beside the properties that compare with them.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import struct
import tempfile
import uuid as uuid_mod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lab.command import run
from virtdlm import protocol
from virtdlm.errors import ErrorCode, VirtDlmError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DRIVER_DIR = os.path.join(REPO, "plugin", "driver")
SOURCES = ["fuzz/json_shim.c", "json.c", "report.c"]
WARNINGS = ["-Wall", "-Wextra", "-Werror", "-Wformat=2", "-Wshadow"]
BUILD_TIMEOUT_S = 120.0
EXAMPLES = int(os.environ.get("VDL_FUZZ_EXAMPLES", "100"))
SANITIZE = os.environ.get("VDL_FUZZ_SANITIZE", "undefined")
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
REPLY_FIELDS = ("v", "ok", "code", "message", "state")
MAX_INT_DIGITS = 9  # json.c: v and code are read as ints of at most 9 digits
OPS = sorted(protocol.OWNER_OPS)


# -- the test build --------------------------------------------------------------------------


def _compile(directory: str, sanitize: str) -> str:
    out = os.path.join(directory, f"json_shim_{sanitize or 'plain'}.so")
    flags = [f"-fsanitize={sanitize}", "-fno-sanitize-recover=all"] if sanitize else []
    argv = [
        "cc", "-std=gnu11", "-O1", "-g", "-fPIC", "-shared", "-fvisibility=hidden",
        *WARNINGS, *flags, "-o", out, *[os.path.join(DRIVER_DIR, s) for s in SOURCES], "-ldl",
    ]  # fmt: skip
    result = run(argv, timeout_s=BUILD_TIMEOUT_S)
    if not result.ok:
        raise AssertionError(result.describe())
    return out


@pytest.fixture(scope="module")
def shim() -> Iterator[ctypes.CDLL]:
    if not shutil.which("cc"):
        pytest.skip("no C compiler to build json.c for fuzzing")
    directory = tempfile.mkdtemp(prefix="vdl-json-")
    try:
        try:
            path = _compile(directory, SANITIZE)
            lib = ctypes.CDLL(path)
        except (AssertionError, OSError):
            if SANITIZE != "undefined":
                raise  # asked for explicitly: say why it does not build or load
            path = _compile(directory, "")  # no libubsan on this machine
            lib = ctypes.CDLL(path)
        c = ctypes
        lib.vdlShimFrameCapacity.restype = c.c_size_t
        lib.vdlShimScanReply.argtypes = [
            c.c_char_p, c.c_size_t, c.POINTER(c.c_int), c.c_char_p, c.c_char_p,
            c.POINTER(c.c_size_t),
        ]  # fmt: skip
        lib.vdlShimScanReply.restype = c.c_int
        strings = c.POINTER(c.c_char_p)
        lib.vdlShimBuildRequest.argtypes = [
            c.c_char_p, c.c_int, c.c_char_p, c.c_char_p, c.c_char_p, c.c_int, c.c_uint, c.c_size_t,
            c.POINTER(c.c_uint), c.POINTER(c.c_uint), strings, strings, strings,
            c.POINTER(c.c_ulonglong), c.c_char_p, c.POINTER(c.c_size_t),
        ]  # fmt: skip
        lib.vdlShimBuildRequest.restype = c.c_int
        yield lib
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@dataclass(frozen=True)
class Scanned:
    accepted: bool
    where: int
    version: int
    ok: int
    code: int
    message: bytes | None
    state: bytes | None


def scan(lib: ctypes.CDLL, body: bytes) -> Scanned:
    fields = (ctypes.c_int * 5)()
    message = ctypes.create_string_buffer(len(body) + 1)
    state = ctypes.create_string_buffer(len(body) + 1)
    where = ctypes.c_size_t(0)
    rc = lib.vdlShimScanReply(body, len(body), fields, message, state, ctypes.byref(where))
    assert rc in (0, 1)
    return Scanned(
        bool(rc), where.value, fields[0], fields[1], fields[2],
        message.value if fields[3] else None, state.value if fields[4] else None,
    )  # fmt: skip


@dataclass(frozen=True)
class Res:
    """One resource as owner.c stores it: a disk (path, flags) or a lease."""

    disk: bool
    name: bytes
    flags: int = 0
    lockspace: bytes | None = None
    path: bytes | None = None
    offset: int = 0


@dataclass(frozen=True)
class Owner:
    uuid: str
    name: bytes
    id: int
    pid: int


def build(
    lib: ctypes.CDLL,
    op: str,
    restrict: int,
    owner: Owner,
    resources: list[Res],
    action: str | None = None,
) -> tuple[int, bytes]:
    n = len(resources)
    strings = ctypes.c_char_p * max(n, 1)
    out = ctypes.create_string_buffer(lib.vdlShimFrameCapacity())
    length = ctypes.c_size_t(0)
    rc = lib.vdlShimBuildRequest(
        op.encode(), restrict, action.encode() if action is not None else None,
        owner.uuid.encode(), owner.name, owner.id, owner.pid, n,
        (ctypes.c_uint * max(n, 1))(*[0 if r.disk else 1 for r in resources]),
        (ctypes.c_uint * max(n, 1))(*[r.flags for r in resources]),
        strings(*[r.name for r in resources]),
        strings(*[r.lockspace for r in resources]),
        strings(*[r.path for r in resources]),
        (ctypes.c_ulonglong * max(n, 1))(*[r.offset for r in resources]),
        out, ctypes.byref(length),
    )  # fmt: skip
    return int(rc), out.raw[: length.value]


# -- what the C side should produce, written again in Python ---------------------------------


def c_string(raw: bytes) -> bytes:
    """json.c's string escaping: ", \\ and control bytes escaped, other bytes as they are."""
    raw = raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
    for control in range(0x20):
        raw = raw.replace(bytes([control]), b"\\u%04x" % control)
    return b'"' + raw + b'"'


def c_request(
    op: str, restrict: int, owner: Owner, resources: list[Res], action: str | None = None
) -> bytes:
    items = []
    for r in resources:
        if r.disk:
            items.append(
                b'{"type":"disk","path":%s,"readonly":%s,"shared":%s}'
                % (c_string(r.name), b"true" if r.flags & 1 else b"false",
                   b"true" if r.flags & 2 else b"false")
            )  # fmt: skip
        else:
            items.append(
                b'{"type":"lease","key":%s,"lockspace":%s,"path":%s,"offset":%d}'
                % (c_string(r.name), c_string(r.lockspace or b""), c_string(r.path or b""),
                   r.offset)
            )  # fmt: skip
    tail = b"" if restrict < 0 else b',"restrict":' + (b"true" if restrict else b"false")
    tail += b"" if action is None else b',"action":' + c_string(action.encode())
    return b'{"v":%d,"op":"%s","owner":{"uuid":"%s","name":%s,"id":%d,"pid":%d},' % (
        protocol.PROTOCOL_VERSION, op.encode(), owner.uuid.encode(), c_string(owner.name),
        owner.id, owner.pid,
    ) + b'"resources":[' + b",".join(items) + b"]" + tail + b"}"  # fmt: skip


def scanned_text(text: str, ascii_escapes: bool) -> bytes:
    """What the scanner makes of a string Python's json.dumps wrote: \\u escapes of non-ASCII
    (one per UTF-16 unit) and of NUL become '?', everything else reads back as it was."""
    out = bytearray()
    for ch in text:
        if ch == "\0":
            out += b"?"
        elif ord(ch) < 0x80 or not ascii_escapes:
            out += ch.encode()
        else:
            out += b"?" * (1 if ord(ch) <= 0xFFFF else 2)
    return bytes(out)


# -- strategies ------------------------------------------------------------------------------

small_int = st.integers(-(10**MAX_INT_DIGITS) + 1, 10**MAX_INT_DIGITS - 1)
json_leaf = (
    st.none() | st.booleans() | st.integers() | st.text(max_size=12)
    | st.floats(allow_nan=False, allow_infinity=False)
)  # fmt: skip
json_value = st.recursive(
    json_leaf,
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids, max_size=4)
    ),
    max_leaves=24,
)


@st.composite
def replies(draw: st.DrawFn) -> tuple[dict[str, Any], bytes, bool]:
    """A reply object as some JSON writer may lay it out: the five fields the driver reads
    (each maybe absent), other keys with any JSON value, any key order and whitespace."""
    fields = {
        "v": small_int, "ok": st.booleans(), "code": small_int,
        "message": st.text(max_size=40), "state": st.text(max_size=40),
    }  # fmt: skip
    reply = {k: draw(s) for k, s in fields.items() if draw(st.booleans())}
    extra = draw(
        st.dictionaries(st.text(max_size=8).filter(lambda k: k not in fields), json_value,
                        max_size=4)
    )  # fmt: skip
    items = draw(st.permutations(list({**reply, **extra}.items())))
    ascii_escapes = draw(st.booleans())
    text = json.dumps(
        dict(items),
        ensure_ascii=ascii_escapes,
        indent=draw(st.sampled_from([None, 0, 2, "\t"])),
        separators=draw(st.sampled_from([(",", ":"), (", ", ": "), (" ,\r\n", " :\t")])),
    )
    return reply, text.encode(), ascii_escapes


@st.composite
def mangled(draw: st.DrawFn) -> bytes:
    """Random bytes, or a valid reply with bytes replaced, inserted, deleted or cut off."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=200))
    body = bytearray(draw(replies())[1])
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(body)))
        kind = draw(st.sampled_from(["replace", "insert", "delete", "cut"]))
        byte = draw(st.sampled_from(list(b'{}[]",:\\u0-e.tfn ') + [0, 0x80, 0xFF]))
        if kind == "insert" or (kind == "replace" and at == len(body)):
            body.insert(at, byte)
        elif kind == "replace":
            body[at] = byte
        elif kind == "delete" and at < len(body):
            del body[at]
        elif kind == "cut":
            del body[at:]
    return bytes(body)


owner_names = st.binary(max_size=300).map(lambda b: b.replace(b"\0", b"")) | st.text(
    max_size=80
).map(lambda t: t.replace("\0", "").encode())
texts = st.text(max_size=60).map(lambda t: t.replace("\0", "").encode())


any_int32 = st.integers(-(2**31), 2**31 - 1)
any_uint32 = st.integers(0, 2**32 - 1)


@st.composite
def owners(
    draw: st.DrawFn,
    names: st.SearchStrategy[bytes] = owner_names,
    ids: st.SearchStrategy[int] = any_int32,
    pids: st.SearchStrategy[int] = any_uint32,
) -> Owner:
    uuid = uuid_mod.UUID(bytes=draw(st.binary(min_size=16, max_size=16)))
    return Owner(str(uuid), draw(names), draw(ids), draw(pids))


@st.composite
def resources(draw: st.DrawFn, strings: st.SearchStrategy[bytes] = texts) -> Res:
    if draw(st.booleans()):
        return Res(True, draw(strings), draw(st.integers(0, 3)))
    return Res(
        False, draw(strings), 0, draw(st.none() | strings), draw(st.none() | strings),
        draw(st.integers(0, 2**64 - 1)),
    )  # fmt: skip


# -- the scanner -----------------------------------------------------------------------------


@FUZZ
@given(body=mangled())
def test_the_scanner_survives_any_bytes_and_accepts_only_json_objects(
    shim: ctypes.CDLL, body: bytes
) -> None:
    got = scan(shim, body)
    assert got.where <= len(body)
    if not got.accepted:
        return
    assert got.where == len(body), "accepted, so read to the end"
    try:
        text = body.decode()
    except UnicodeDecodeError:
        return  # json.c passes bytes through; virtdlmd only ever sends UTF-8
    parsed = json.loads(text)
    assert isinstance(parsed, dict)
    assert got.version == parsed.get("v", -1)
    assert got.ok == int(parsed.get("ok", -1))
    assert got.code == parsed.get("code", 0)


@FUZZ
@given(case=replies())
def test_the_scanner_reads_every_json_layout_of_a_reply(
    shim: ctypes.CDLL, case: tuple[dict[str, Any], bytes, bool]
) -> None:
    reply, body, ascii_escapes = case
    got = scan(shim, body)
    assert got.accepted and got.where == len(body)
    assert (got.version, got.ok, got.code) == (
        reply.get("v", -1), int(reply.get("ok", -1)), reply.get("code", 0)
    )  # fmt: skip
    for key in ("message", "state"):
        want = scanned_text(reply[key], ascii_escapes) if key in reply else None
        assert getattr(got, key) == want


@FUZZ
@given(code=st.sampled_from(list(ErrorCode)), message=st.text(max_size=200))
def test_the_scanner_reads_virtdlmd_error_replies(
    shim: ctypes.CDLL, code: ErrorCode, message: str
) -> None:
    err = VirtDlmError(message)
    err.code = code
    frame = protocol.encode_frame(protocol.error_reply(err))
    got = scan(shim, frame[protocol.HEADER.size :])
    assert got.accepted
    assert (got.version, got.ok, got.code) == (protocol.PROTOCOL_VERSION, 0, int(code))
    assert got.message == scanned_text(message or "VirtDlmError", ascii_escapes=False)


@pytest.mark.parametrize(
    ("body", "accepted"),
    [
        (b'{"v":1,"ok":true,"x":' + b"[" * 32 + b"]" * 32 + b"}", True),
        (b'{"v":1,"ok":true,"x":' + b"[" * 33 + b"]" * 33 + b"}", False),
        (b'{"v":1,"ok":true,"x":tru}', False),
        (b'{"v":1,"ok":true,"x":1.2.3}', False),
        (b'{"v":1,"ok":true,"x":+1}', False),
        (b'{"v":1,"ok":true,"x":-}', False),
        (b'{"v":01,"ok":true}', False),
        (b'{"v":1,"ok":true,"x":[1,]}', False),
        (b'{"v":1,"ok":true,"x":{"a" 1}}', False),
        (b'{"v":1,"ok":true,"x":{1:2}}', False),
        (b'{"v":1,"ok":true,"x":"\\ud800"}', True),
        (b'{"v":1,"ok":true,"x":-0.5e-3}', True),
        (b'{"v":1,"ok":true', False),
        (b'{"v":1,"ok":true}\x00', False),
    ],
)
def test_the_scanner_follows_the_json_grammar(
    shim: ctypes.CDLL, body: bytes, accepted: bool
) -> None:
    assert scan(shim, body).accepted == accepted


# -- the writer ------------------------------------------------------------------------------


@FUZZ
@given(
    op=st.sampled_from(OPS),
    restrict=st.sampled_from([-1, 0, 1]),
    owner=owners(),
    res=st.lists(resources(), max_size=6),
    action=st.none() | st.sampled_from(protocol.ACTIONS),
)
def test_the_writer_escapes_exactly_as_documented(
    shim: ctypes.CDLL, op: str, restrict: int, owner: Owner, res: list[Res], action: str | None
) -> None:
    rc, frame = build(shim, op, restrict, owner, res, action)
    body = c_request(op, restrict, owner, res, action)
    assert rc == 0
    assert frame == struct.pack(">I", len(body)) + body


@FUZZ
@given(
    count=st.integers(0, protocol.MAX_RESOURCES_PER_REQUEST),
    size=st.integers(0, protocol.MAX_PATH_BYTES),
    char=st.sampled_from([b"a", b'"', b"\x01", "é".encode()]),
)
def test_the_writer_refuses_a_request_over_the_frame_limit(
    shim: ctypes.CDLL, count: int, size: int, char: bytes
) -> None:
    owner = Owner(str(uuid_mod.UUID(int=1)), b"vm", 1, 42)
    res = [Res(True, b"/" + char * (size // len(char)))] * count
    rc, frame = build(shim, "acquire", -1, owner, res)
    body = c_request("acquire", -1, owner, res)
    assert rc == (0 if len(body) <= protocol.MAX_FRAME_BYTES else -1)
    if rc == 0:
        assert frame[protocol.HEADER.size :] == body


def test_the_writer_fills_a_frame_to_the_last_byte(shim: ctypes.CDLL) -> None:
    owner = Owner(str(uuid_mod.UUID(int=1)), b"vm", 1, 42)
    empty = len(c_request("acquire", -1, owner, [Res(True, b"")]))
    for extra in (0, 1):
        res = [Res(True, b"a" * (protocol.MAX_FRAME_BYTES - empty + extra))]
        rc, frame = build(shim, "acquire", -1, owner, res)
        if extra:
            assert rc == -1
        else:
            assert (rc, len(frame)) == (0, protocol.HEADER.size + protocol.MAX_FRAME_BYTES)


utf8_names = st.text(min_size=1, max_size=60).map(lambda t: t.replace("\0", "x").encode())
abs_paths = st.text(max_size=60).map(lambda t: ("/" + t.replace("\0", "")).encode())


@st.composite
def daemon_resources(draw: st.DrawFn) -> Res:
    """Resources within virtdlmd's limits (protocol.py): what owner.c lets through anyway."""
    if draw(st.booleans()):
        return Res(True, draw(abs_paths), draw(st.integers(0, 3)))
    return Res(
        False, draw(utf8_names), 0, draw(st.none() | texts), draw(st.none() | abs_paths),
        draw(st.integers(0, 2**63 - 1)),
    )  # fmt: skip


@FUZZ
@given(
    op=st.sampled_from(OPS),
    owner=owners(utf8_names, st.integers(-1, 2**31 - 1), st.integers(1, protocol.MAX_PID)),
    res=st.lists(daemon_resources(), max_size=6),
    restrict=st.booleans(),
    action=st.sampled_from(protocol.ACTIONS),
)
def test_virtdlmd_reads_the_request_the_writer_meant(
    shim: ctypes.CDLL, op: str, owner: Owner, res: list[Res], restrict: bool, action: str
) -> None:
    flag = int(restrict) if op == "register" else -1
    sent = action if op in protocol.ACTION_OPS else None  # dlm_driver.c: register, acquire
    rc, frame = build(shim, op, flag, owner, res, sent)
    assert rc == 0
    request = protocol.parse_request(protocol.decode_body(frame[protocol.HEADER.size :]))
    want = [
        protocol.DiskSpec(r.name.decode(), bool(r.flags & 1), bool(r.flags & 2))
        if r.disk
        else protocol.LeaseSpec(
            r.name.decode(), (r.lockspace or b"").decode(), (r.path or b"").decode(), r.offset
        )
        for r in res
    ]
    assert request == protocol.Request(
        op,
        protocol.OwnerSpec(owner.uuid, owner.name.decode(), owner.id, owner.pid),
        tuple(want),
        restrict if op == "register" else False,
        action if sent is not None else protocol.DEFAULT_ACTION,
    )
