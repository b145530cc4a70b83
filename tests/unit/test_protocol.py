"""The wire protocol: framing, validation, and a daemon that survives garbage (item 5)."""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from virtdlm import protocol
from virtdlm.errors import InvalidRequest, ProtocolError, UnsupportedVersion

from .procs import DaemonProc

OWNER = {"uuid": "6a1f0c4e-3b5d-4f6a-9c1e-2d3b4c5d6e7f", "name": "vm-1", "id": 1, "pid": 42}
READ_TIMEOUT_S = 5


def _msg(**over: Any) -> dict[str, Any]:
    return {
        "v": 1,
        "op": "acquire",
        "owner": dict(OWNER),
        "resources": [{"type": "disk", "path": "/srv/one.qcow2"}],
        **over,
    }


def test_round_trip_of_a_request() -> None:
    req = protocol.parse_request(_msg())
    assert protocol.parse_request(protocol.request_message(req)) == req
    frame = protocol.encode_frame(protocol.request_message(req))
    assert protocol.frame_length(frame[:4]) == len(frame) - 4


@pytest.mark.parametrize(
    ("case", "message", "error", "text"),
    [
        ("old version", _msg(v=0), UnsupportedVersion, "protocol version 0 is not supported"),
        ("unknown op", _msg(op="steal"), InvalidRequest, "unknown op 'steal'"),
        ("unknown key", _msg(color="red"), InvalidRequest, "unknown field(s) color"),
        ("bad uuid", _msg(owner={**OWNER, "uuid": "nope"}), InvalidRequest, "is not a UUID"),
        ("pid zero", _msg(owner={**OWNER, "pid": 0}), InvalidRequest, "owner.pid must be"),
        (
            "relative path",
            _msg(resources=[{"type": "disk", "path": "a.img"}]),
            InvalidRequest,
            "is not absolute",
        ),
        (
            "path too long",
            _msg(resources=[{"type": "disk", "path": "/" + "a" * 4096}]),
            InvalidRequest,
            "over the limit of 4096",
        ),
        (
            "name too long",
            _msg(owner={**OWNER, "name": "n" * 257}),
            InvalidRequest,
            "owner.name is 257 bytes, over the limit of 256",
        ),
        (
            "too many",
            _msg(resources=[{"type": "disk", "path": f"/d{i}"} for i in range(257)]),
            InvalidRequest,
            "257 resources in one request, over the limit of 256",
        ),
        ("bad type", _msg(resources=[{"type": "net"}]), InvalidRequest, "is not 'disk' or 'lease'"),
        (
            "flag not bool",
            _msg(resources=[{"type": "disk", "path": "/a", "shared": 1}]),
            InvalidRequest,
            "shared must be true or false",
        ),
        ("status extra", {"v": 1, "op": "status", "owner": OWNER}, InvalidRequest, "unknown field"),
    ],
    ids=lambda x: x if isinstance(x, str) else "",
)
def test_invalid_requests_are_refused_with_a_reason(
    case: str, message: dict[str, Any], error: type[Exception], text: str
) -> None:
    with pytest.raises(error, match=None) as info:
        protocol.parse_request(message)
    assert text in str(info.value)


# -- action: the domain's on_lockfailure, on register and acquire --------------------------


@pytest.mark.parametrize("op", sorted(protocol.ACTION_OPS))
@pytest.mark.parametrize(
    ("sent", "parsed"),
    [
        (None, "default"),
        ("default", "default"),
        ("poweroff", "poweroff"),
        ("restart", "restart"),
        ("pause", "pause"),
        ("ignore", "ignore"),
    ],
    ids=lambda x: str(x),
)
def test_action_is_read_on_register_and_acquire(op: str, sent: str | None, parsed: str) -> None:
    message = _msg(op=op) if sent is None else _msg(op=op, action=sent)
    request = protocol.parse_request(message)
    assert request.action == parsed
    wire = protocol.request_message(request)
    assert wire["action"] == parsed  # the client always names it
    assert protocol.parse_request(wire) == request


@pytest.mark.parametrize(
    ("case", "message", "text"),
    [
        (
            "unknown action",
            _msg(action="reboot"),
            "acquire.action 'reboot' is not one of default, poweroff, restart, pause, ignore",
        ),
        ("action as a number", _msg(op="register", action=1), "register.action 1 is not one of"),
        ("action in upper case", _msg(action="PAUSE"), "acquire.action 'PAUSE' is not one of"),
        ("action on release", _msg(op="release", action="pause"), "unknown field(s) action"),
        ("action on inquire", _msg(op="inquire", action="pause"), "unknown field(s) action"),
    ],
    ids=lambda x: x if isinstance(x, str) and " " in x else "",
)
def test_a_bad_action_is_an_invalid_request(case: str, message: dict[str, Any], text: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        protocol.parse_request(message)
    assert text in str(info.value)


def test_release_and_inquire_carry_no_action() -> None:
    for op in ("release", "inquire"):
        assert "action" not in protocol.request_message(protocol.parse_request(_msg(op=op)))


@pytest.mark.parametrize("length", [0, protocol.MAX_FRAME_BYTES + 1, 2**32 - 1])
def test_frame_length_outside_limits_is_a_protocol_error(length: int) -> None:
    with pytest.raises(ProtocolError, match="outside 1..65536"):
        protocol.frame_length(struct.pack(">I", length))


@pytest.mark.parametrize("body", [b"\xff\xfe", b"[1,2]", b"{", b'"x"'])
def test_bodies_that_are_not_json_objects_are_refused(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        protocol.decode_body(body)


def _send_raw(path: str, data: bytes) -> dict[str, Any] | None:
    """Send raw bytes, half-close, return the error reply (None if closed silently)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(READ_TIMEOUT_S)
        s.connect(path)
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        buf = b""
        while chunk := s.recv(65536):
            buf += chunk
    if len(buf) < 4:
        return None
    return dict(json.loads(buf[4 : 4 + struct.unpack(">I", buf[:4])[0]]))


@pytest.mark.parametrize(
    ("case", "data", "code"),
    [
        ("oversized header", struct.pack(">I", 10_000_000), 2),
        ("truncated body", struct.pack(">I", 100) + b'{"v":1', 2),
        ("not json", struct.pack(">I", 5) + b"hello", 2),
        ("bad version", protocol.encode_frame({"v": 9, "op": "status"}), 3),
        ("bad request", protocol.encode_frame(_msg(op="steal")), 5),
    ],
    ids=lambda x: x if isinstance(x, str) else "",
)
def test_daemon_answers_garbage_with_an_error_and_keeps_serving(
    daemon: DaemonProc, case: str, data: bytes, code: int
) -> None:
    reply = _send_raw(daemon.socket, data)
    assert reply is not None and reply["ok"] is False
    assert reply["code"] == code, reply
    assert reply["message"]
    assert daemon.send(protocol.Request("status"))["ok"]


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.one_of(
        st.binary(max_size=300),
        st.builds(lambda b: struct.pack(">I", len(b)) + b, st.binary(max_size=300)),
        st.builds(
            lambda obj: protocol.encode_frame(obj),
            st.dictionaries(
                st.sampled_from(["v", "op", "owner", "resources", "restrict", "x"]),
                st.recursive(
                    st.none() | st.booleans() | st.integers() | st.text(),
                    lambda c: st.lists(c) | st.dictionaries(st.text(), c),
                    max_leaves=8,
                ),
            ),
        ),
    )
)
def test_fuzzed_frames_never_break_the_daemon(daemon: DaemonProc, data: bytes) -> None:
    reply = _send_raw(daemon.socket, data)
    if reply is not None and not reply.get("ok"):
        assert reply["code"] in (2, 3, 4, 5, 11) and reply["message"], reply
    assert daemon.send(protocol.Request("status"))["ok"]
