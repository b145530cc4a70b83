"""The black-box suite's report and its case tables, without a lab."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import libvirt

from lab.suite.report import Row, render_html, render_text, write_json
from lab.virt.refusal import LOCK_MANAGER
from tests.blackbox.cluster.cases import PROTECTION_ROWS, TABLE_5_1, TABLE_5_2

ROWS = [
    Row(
        "5-2 across nodes (NFS)",
        "vm-2 rw one.qcow2",
        "node-a",
        "start vm-2",
        "refused: x",
        LOCK_MANAGER,
        LOCK_MANAGER,
        "87",
        3.21,
        "holder vm-1@node-b",
        "t::a",
        "passed",
    ),
    Row(
        "control run",
        "vm-2 <rw>",
        "node-a",
        "start vm-2",
        "",
        LOCK_MANAGER,
        "ok",
        "",
        2.5,
        "",
        "t::b",
        "xfailed",
    ),
    Row(
        "lifecycle",
        "resume",
        "node-a",
        "resume vm-1",
        "",
        LOCK_MANAGER,
        "ok",
        "",
        1.0,
        "",
        "t::c",
        "failed",
    ),
]
META = {
    "started": "2026-11-24T10:00:00",
    "duration": "900 s",
    "versions": {
        "node-a": {"kernel": "6.1.0-27", "libvirt": "9.0.0"},
        "node-b": {"kernel": "6.1.0-27"},
    },
    "settings": {"lock_manager": "dlm", "nfs_locking": False},
}


def test_the_page_shows_each_row_with_thesis_verdict_versions_and_settings() -> None:
    page = render_html(ROWS, META)
    assert "refused: x" in page and "87" in page and "holder vm-1@node-b" in page
    assert "vm-2 &lt;rw&gt;" in page, "text is escaped"
    assert page.count("<tr class='pass'>") == 1 and page.count("<tr class='xfail'>") == 1
    assert page.count("<tr class='fail'>") == 1
    assert "unprotected, as the control run expects" in page
    assert "6.1.0-27" in page and "9.0.0" in page and "nfs_locking" in page
    assert "1 fail, 1 pass, 1 xfail" in page
    body = page.split("<style>")[0] + page.split("</style>")[1]
    ET.fromstring(
        "<r>" + body.replace("<!doctype html>", "").replace("<meta charset='utf-8'>", "") + "</r>"
    )


def test_text_matrix_has_a_line_per_row_and_json_round_trips(tmp_path) -> None:
    lines = render_text(ROWS)
    assert len(lines) == 1 + len(ROWS) and "NOT as expected" in lines[3]
    path = f"{tmp_path}/r/cluster.json"
    write_json(path, ROWS, META)
    with open(path) as f:
        data = json.load(f)
    assert data["rows"][0]["code"] == "87" and data["meta"]["settings"]["lock_manager"] == "dlm"


def test_the_thesis_rows_carry_the_thesis_and_protection_rows_expect_the_lock_manager() -> None:
    assert [c.probe.vm for c in TABLE_5_1] == ["vm-1", "vm-2", "vm-3", "vm-4"]
    assert all(c.thesis for c in TABLE_5_1 + TABLE_5_2)
    assert {c.storage for c in PROTECTION_ROWS} == {"nfs", "block"} and len(PROTECTION_ROWS) == 4
    for case in PROTECTION_ROWS:
        assert (
            case.probe.expect == LOCK_MANAGER and case.probe.code == libvirt.VIR_ERR_RESOURCE_BUSY
        )
        assert case.probe.node != case.setup[-1].to, "the probe runs on the other node"
    assert len({c.id for c in TABLE_5_1 + TABLE_5_2}) == len(TABLE_5_1) + len(TABLE_5_2)


def test_the_page_says_whether_the_lab_fences() -> None:
    from lab.suite.report import render_html

    unsafe = "OFF (fencing: false): the lab is UNSAFE under a network partition"
    page = render_html([], {"fencing": unsafe, "writer guests": "/img"})
    assert f"<b>fencing</b>: {unsafe}" in page
    assert "<b>writer guests</b>: /img" in page
