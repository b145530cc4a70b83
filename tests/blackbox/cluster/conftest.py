"""Fixtures of the two-node black-box suite, its audits and its report.

The lab is brought up if it is not (tests/conftest.py); libvirt is driven over TCP from this host
(lab.suite.steps), shell faults over SSH. After every step the invariant is checked across both
nodes (lab.suite.steps.TwoNode.invariant); after every test all domains go, neither node's
virtdlmd may hold a lock, and the nodes' journals may show no error beyond what the test allows
with @pytest.mark.allow_log (lab.suite.journal). The rows land in
.lab/reports/cluster.{html,json}; JUnit XML comes from pytest's --junitxml (the Makefile passes
.lab/reports/cluster-junit.xml).
"""

from __future__ import annotations

import datetime
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from lab.cluster import NODES, Lab
from lab.host.objects import HostObjects
from lab.nodes import WRITER_BOOT_IMAGE
from lab.nodes.node import Node
from lab.scenario.run import Outcome, Result, Runner
from lab.scenario.schema import Scenario, dump
from lab.settings import LAB_DIR, lab_prefix
from lab.suite import report
from lab.suite.audit import AuditFailure
from lab.suite.journal import JournalWatch, failure_message
from lab.suite.matrix import thesis_disks
from lab.suite.node_loss import node_running, power_on
from lab.suite.steps import (
    QUERY_TIMEOUT_S,
    RELEASE_DEADLINE_S,
    StepResult,
    TwoNode,
    versions,
)

REPORT_DIR = os.path.join(LAB_DIR, "reports")
CASE_TIMEOUT_S = 420  # pytest-timeout for one case: each of its steps has its own deadline
ROWS: list[report.Row] = []
META: dict[str, Any] = {}
# The modules run in this order: the cheap, harmless rows first, the node power-off and
# the partitions (fences, power cycles) last.
MODULE_ORDER = (
    "test_tables",
    "test_lifecycle",
    "test_nodes",
    "test_control_nop",
    "test_campaign",
    "test_node_failure",
    "test_lock_failure",
    "test_partition",
    "test_majority",
)

Record = Callable[..., report.Row]
Play = Callable[..., tuple[Result, Runner]]
REPLAYS: dict[str, str] = {}  # test id -> the command that replays it


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = os.path.dirname(os.path.abspath(__file__))

    def rank(item: pytest.Item) -> int:
        if os.path.dirname(str(item.path)) != here:
            return -1  # other tiers' tests keep their place, before this suite
        name = item.path.stem
        return MODULE_ORDER.index(name) if name in MODULE_ORDER else len(MODULE_ORDER)

    items.sort(key=rank)  # stable: the order inside a module stays


def lock_manager_of(node: Node) -> str:
    text = node.check("grep -h '^lock_manager' /etc/libvirt/qemu.conf || true").stdout
    return text.split("=", 1)[1].strip().strip('"') if "=" in text else "nop"


@pytest.fixture(scope="session")
def tn(request: pytest.FixtureRequest, lab: Lab, nodes: dict[str, Node]) -> Iterator[TwoNode]:
    managers = {n: lock_manager_of(node) for n, node in nodes.items()}
    if set(managers.values()) != {"dlm"}:
        pytest.fail(
            f"the lab's libvirtd runs lock managers {managers}; the suite needs dlm on both "
            "(the control run switches to nop by itself): run 'make lab' with "
            "lock_manager: dlm in lab/settings.yaml"
        )
    META["versions"] = {n: versions(node) for n, node in nodes.items()}
    META["settings"] = {**lab.settings, "prefix": lab_prefix()}
    two = TwoNode.connect(nodes)
    two.writer_boot = WRITER_BOOT_IMAGE if request.config.getoption("writers") else ""
    META["writer guests"] = two.writer_boot or "off (--no-writers): firmware-only domains"
    META["fencing"] = (
        "on: dlm_controld fences through fence_virt -> fence_virtd on the host (action off)"
        if lab.settings["fencing"]
        else "OFF (fencing: false): the lab is UNSAFE under a network partition"
    )
    two.remove_everything()  # what an interrupted earlier run may have left
    two.wait_no_locks(NODES, RELEASE_DEADLINE_S)
    yield two
    two.close()


@pytest.fixture(scope="session")
def mount_point(lab: Lab) -> str:
    return str(lab.settings["mount_point"])


@pytest.fixture
def node_journals(request: pytest.FixtureRequest, tn: TwoNode) -> Iterator[JournalWatch]:
    """Armed before the test, read after its cleanup: no bad line in the nodes' journals
    beyond the test's allow_log markers. A node that is down at the end is not read."""
    allow = [text for mark in request.node.iter_markers("allow_log") for text in mark.args]
    up = {name: tn.nodes[name] for name in NODES if name not in tn.down}
    watch = JournalWatch(up, allow).arm()
    yield watch
    bad = watch.bad_lines(skip=tn.down)
    if bad:
        raise AuditFailure(failure_message(bad))


def bring_back_lost_nodes(lab: Lab, tn: TwoNode) -> None:
    """A node that is off though no test put it down (fenced after a stall, say) is powered
    on once its fence is done, and the lab must be healthy again: one test's lost node must
    not fail every test after it."""
    with HostObjects() as host:
        lost = [n for n in NODES if n not in tn.down and not node_running(host, n)]
    for name in lost:
        power_on(lab, tn, name)


@pytest.fixture(autouse=True)
def clean_cluster(tn: TwoNode, lab: Lab, node_journals: JournalWatch) -> Iterator[None]:
    """Before: nothing runs. After: every domain gone, no lock left on either node, both
    lock daemons alive, the writers' sectors wiped from the thesis disks; then the journals
    are read (node_journals)."""
    tn.steps.clear()
    yield
    tn.on_step = None
    bring_back_lost_nodes(lab, tn)
    tn.remove_everything()
    up = [n for n in NODES if n not in tn.down]
    for name in up:  # a scenario may have stopped virtdlmd and failed before starting it
        tn.nodes[name].check("systemctl start virtdlmd.socket virtdlmd.service", QUERY_TIMEOUT_S)
    tn.wait_no_locks(up, RELEASE_DEADLINE_S)
    if tn.writer_boot and up:
        tn.wipe_disks(thesis_disks(str(lab.settings["mount_point"])))
    for name in up:
        out = tn.nodes[name].check("virtdlm status --json", QUERY_TIMEOUT_S).stdout
        status = json.loads(out)
        assert status.get("backend") == "libdlm", f"virtdlmd on {name}: {status}"


@pytest.fixture
def record(
    request: pytest.FixtureRequest, record_property: Callable[[str, object], None]
) -> Record:
    """record(table, case, result, expected, thesis="", note="") -> the report row."""

    def add(
        table: str,
        case: str,
        result: StepResult,
        expected: str,
        thesis: str = "",
        note: str = "",
    ) -> report.Row:
        holder = f" (holder {result.holder})" if result.holder else ""
        row = report.Row(
            table=table,
            case=case,
            node=result.node,
            action=f"{result.action} {result.vm}".strip(),
            thesis=thesis,
            expected=expected,
            actual=result.outcome,
            code="" if result.code is None else str(result.code),
            seconds=round(result.seconds, 2),
            note=(note + holder).strip(),
            data=result.data,
            test=request.node.nodeid,
            replay=REPLAYS.get(request.node.nodeid, ""),
        )
        ROWS.append(row)
        record_property(f"row {len(ROWS)}", json.dumps(row.__dict__))
        return row

    return add


def scenario_dir(nodeid: str) -> str:
    """.lab/reports/scenarios/<test id>/: the test's scenario.yaml and history.jsonl."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", nodeid.split("::", 1)[-1]).strip("-")
    return os.path.join(REPORT_DIR, "scenarios", name)


@pytest.fixture
def play(
    request: pytest.FixtureRequest,
    tn: TwoNode,
    lab: Lab,
    record_property: Callable[[str, object], None],
) -> Play:
    """play(scenario, on_item=None, on_runner=None) -> (result, runner): run a scenario
    through the one runner (lab.scenario.run) on the lab as the test's fixtures left it,
    writing its file and history under scenario_dir; the test's replay command goes into the
    reports. The journals are read once per test (node_journals), not per step."""

    def run(
        scenario: Scenario,
        on_item: Callable[[list[Outcome], dict[str, Any]], None] | None = None,
        on_runner: Callable[[Runner], None] | None = None,
    ) -> tuple[Result, Runner]:
        where = scenario_dir(request.node.nodeid)
        os.makedirs(where, exist_ok=True)
        path = os.path.join(where, "scenario.yaml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(dump(scenario, f"{request.node.nodeid}\nfrom {scenario.source}"))
        command = f"make replay SCENARIO={os.path.relpath(path)}"
        REPLAYS[request.node.nodeid] = command
        record_property("replay", command)
        with open(os.path.join(where, "history.jsonl"), "w", encoding="utf-8") as hist:
            runner = Runner(tn, lab, scenario, hist, read_journals=False, on_item=on_item)
            if on_runner is not None:
                on_runner(runner)
            return runner.run(), runner

    return run


def step_result(outcome: Outcome, item: dict[str, Any]) -> StepResult:
    """A scenario step's outcome as the report's StepResult, with the data audit's view."""
    s = outcome.step
    return StepResult(
        s.node,
        f"{s.do} to {s.to}" if s.to else s.do,
        s.vm,
        outcome.outcome,
        outcome.code,
        outcome.seconds,
        outcome.message,
        outcome.refusal,
        item.get("invariant", {}).get("saw", ""),
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call" or rep.failed:
        if hasattr(rep, "wasxfail"):
            verdict = "xfailed" if rep.skipped else "xpassed"
        else:
            verdict = rep.outcome
        for row in ROWS:
            if row.test == item.nodeid and (rep.when == "call" or verdict == "failed"):
                row.verdict = verdict
                row.replay = REPLAYS.get(item.nodeid, row.replay)
        if rep.failed and item.nodeid in REPLAYS:
            rep.sections.append(("replay this test's scenario", REPLAYS[item.nodeid]))


def pytest_sessionstart(session: pytest.Session) -> None:
    META["started"] = datetime.datetime.now().isoformat(timespec="seconds")
    META["t0"] = time.monotonic()


def pytest_sessionfinish(session: pytest.Session) -> None:
    if not ROWS:
        return
    META["duration"] = f"{time.monotonic() - META.pop('t0', time.monotonic()):.0f} s"
    report.write_json(os.path.join(REPORT_DIR, "cluster.json"), ROWS, META)
    with open(os.path.join(REPORT_DIR, "cluster.html"), "w", encoding="utf-8") as f:
        f.write(report.render_html(ROWS, META))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not ROWS:
        return
    tr = terminalreporter
    tr.section("two-node black-box matrix (thesis 2018 vs measured today)")
    if META.get("fencing"):
        tr.write_line(f"fencing: {META['fencing']}")
    for line in report.render_text(ROWS):
        tr.write_line(line)
    tr.write_line(f"report: {os.path.join(REPORT_DIR, 'cluster.html')} (and cluster.json)")
