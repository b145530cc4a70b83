"""Configuration: libvirt conf syntax, defaults, and errors with file and line (item 8)."""

from __future__ import annotations

import os

import pytest

from virtdlm.config import Config, load_config, parse_config
from virtdlm.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = os.path.join(ROOT, "plugin", "conf", "qemu-dlm.conf")


def test_defaults() -> None:
    c = Config()
    assert (c.auto_disk_leases, c.lease_required, c.lockspace_name) == (True, False, "libvirt")
    assert (c.socket_path, c.backend, c.purge_orphans) == (
        "/run/libvirt/virtdlmd.sock",
        "dlm",
        True,
    )


def test_lock_failure_defaults() -> None:
    c = Config()
    assert (c.health_interval_s, c.quorum_grace_s, c.lockfailure_uri) == (
        2.0,
        10.0,
        "qemu:///system",
    )


@pytest.mark.parametrize(
    ("text", "key", "value"),
    [
        ("health_interval_s = 5\n", "health_interval_s", 5.0),
        ("health_interval_s = 0.25   # fast\n", "health_interval_s", 0.25),
        ("quorum_grace_s = 0\n", "quorum_grace_s", 0.0),
        ("quorum_grace_s = 30.5\n", "quorum_grace_s", 30.5),
        ('lockfailure_uri = "test:///default"\n', "lockfailure_uri", "test:///default"),
        (
            'lockfailure_uri = "qemu+ssh://host/system"\n',
            "lockfailure_uri",
            "qemu+ssh://host/system",
        ),
    ],
)
def test_lock_failure_keys(text: str, key: str, value: object) -> None:
    assert getattr(parse_config(text), key) == value


def test_full_file_with_comments_and_quotes() -> None:
    c = parse_config(
        "# a comment\n"
        "auto_disk_leases = 0   # trailing comment\n"
        'lockspace_name = "vms"\n'
        'backend = "model"\n'
        'socket_path = "/run/x/a \\"b\\".sock"\n'
    )
    assert c.auto_disk_leases is False
    assert c.lease_required is True  # follows auto_disk_leases unless set
    assert (c.lockspace_name, c.backend, c.socket_path) == ("vms", "model", '/run/x/a "b".sock')


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("colour = 1\n", 1, "unknown key 'colour'"),
        ("\n\nauto_disk_leases = 2\n", 3, "auto_disk_leases must be 0 or 1"),
        ('auto_disk_leases = "1"\n', 1, "auto_disk_leases must be 0 or 1"),
        ("lockspace_name = 7\n", 1, "lockspace_name must be a quoted string"),
        ('lockspace_name = "bad name"\n', 1, "must be 1..64 bytes of [A-Za-z0-9_.-]"),
        ('backend = "sanlock"\n', 1, "backend 'sanlock' is not one of dlm, model"),
        ('socket_path = "relative"\n', 1, "must be an absolute path"),
        ('lockspace_name = "unterminated\n', 1, "unterminated or malformed string"),
        ("just words\n", 1, "expected 'key = value'"),
        ('backend = "dlm"\nbackend = "model"\n', 2, "backend is already set on line 1"),
        ('allowed_group = "no-such-group-xyz"\n', 1, "no such group"),
        ("\nhealth_interval_s = -1\n", 2, "health_interval_s -1 must be more than 0 and at"),
        ("health_interval_s = 0\n", 1, "health_interval_s 0 must be more than 0"),
        ("health_interval_s = 61\n", 1, "must be more than 0 and at most 60 seconds"),
        ('health_interval_s = "2"\n', 1, "health_interval_s must be a number of seconds"),
        ("health_interval_s = 2s\n", 1, "expected a quoted string or a number, got '2s'"),
        ("quorum_grace_s = -0.5\n", 1, "quorum_grace_s -0.5 must not be negative"),
        ("lockfailure_uri = 1\n", 1, "lockfailure_uri must be a quoted string"),
        ('lockfailure_uri = "system"\n', 1, "lockfailure_uri 'system' is not a libvirt URI"),
        ("model_node_id = 1.5\n", 1, "model_node_id must be a positive integer, got 1.5"),
        ("purge_orphans = 1.0\n", 1, "purge_orphans must be 0 or 1, got 1.0"),
    ],
)
def test_bad_config_names_file_line_and_reason(text: str, line: int, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "/etc/libvirt/qemu-dlm.conf")
    assert info.value.line == line
    assert str(info.value).startswith(f"/etc/libvirt/qemu-dlm.conf:{line}: ")
    assert reason in str(info.value)


def test_missing_file_means_defaults_unless_required(tmp_path: os.PathLike[str]) -> None:
    missing = os.path.join(tmp_path, "absent.conf")
    assert load_config(missing) == Config()
    with pytest.raises(ConfigError, match="no such file"):
        load_config(missing, required=True)


def test_unreadable_file_is_an_error_with_path(tmp_path: os.PathLike[str]) -> None:
    directory = os.path.join(tmp_path, "a-directory.conf")
    os.mkdir(directory)
    with pytest.raises(ConfigError, match=f"{directory}: cannot read"):
        load_config(directory)


def test_shipped_example_parses_to_the_defaults() -> None:
    assert load_config(EXAMPLE, required=True) == Config()
