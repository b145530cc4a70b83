"""The audits, as a list (Pacemaker CTS's shape): each says whether it applies to a step's
record and what it saw. One runner (lab.scenario.run) runs them after every step for the
suite, replays and campaigns alike, and ``check`` runs them again offline on a stored
history (lab.scenario.history), so they read only the record.

A step's record (lab.scenario.history) carries ``state``: per node, what that node said
after the step — ``up``, its running and paused ``domains`` with their disks and modes
(libvirt), ``locks`` (virtdlmd), ``quorum``, every ``qemu`` with the files it has open for
writing (from /proc: the node's own truth), and ``paths`` (where each disk path really
leads on that node) — and ``expected``: the nodes the scenario has powered off or cut, and
where it keeps virtdlmd down on purpose.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .schema import ANY

RUNNING, PAUSED = "running", "paused"
SETTLE_S = 2.0  # no lock may outlive its QEMU by more than this (the release deadline)

Record = Mapping[str, Any]


@dataclass(frozen=True)
class Verdict:
    audit: str
    applies: bool
    ok: bool
    saw: str

    def to_json(self) -> dict[str, Any]:
        return {"audit": self.audit, "applies": self.applies, "ok": self.ok, "saw": self.saw}

    def describe(self) -> str:
        mark = "ok" if self.ok else "FAILED" if self.applies else "n/a"
        return f"{self.audit}: {mark}: {self.saw}"


def _up(record: Record) -> dict[str, Mapping[str, Any]]:
    return {n: s for n, s in record["state"].items() if s.get("up")}


def _not_applicable(name: str, why: str) -> Verdict:
    return Verdict(name, False, True, why)


# -- the audits --------------------------------------------------------------------------------


def expectation(record: Record) -> Verdict:
    """The step came to what it was expected to (outcome, libvirt code, holder)."""
    name = "expectation"
    steps = record.get("steps", [])
    wrong = []
    for s in steps:
        expect = s.get("expect", "ok")
        if expect == ANY:
            continue
        if s["outcome"] != expect:
            wrong.append(f"{s['describe']}: {s['outcome']} (expected {expect}): {s['message']}")
        elif s.get("code") is not None and s["libvirt_code"] != s["code"]:
            wrong.append(f"{s['describe']}: code {s['libvirt_code']} (expected {s['code']})")
        elif s.get("holder") and s["holder_seen"] != s["holder"]:
            wrong.append(f"{s['describe']}: holder {s['holder_seen']!r} (expected {s['holder']})")
    if all(s.get("expect", "ok") == ANY for s in steps):
        return _not_applicable(name, "every step expects any outcome")
    return Verdict(name, True, not wrong, "; ".join(wrong) or "as expected")


def writers_by_disk(record: Record) -> dict[str, list[tuple[str, str, bool]]]:
    """{real path: [(node, domain, exclusive)]}: every running QEMU that has the disk open
    for writing (the node's /proc), and whether its domain declares the disk exclusive (rw,
    not shareable). A paused QEMU runs no guest code (and holds no lock: libvirt releases
    on pause), so it writes nothing and is not counted."""
    out: dict[str, list[tuple[str, str, bool]]] = defaultdict(list)
    for node, state in _up(record).items():
        domains = state.get("domains", {})
        real = state.get("paths", {})
        for q in state.get("qemu", []):
            dom = domains.get(q["domain"])
            if dom is None or dom["state"] != RUNNING:
                continue
            modes = {real.get(p, p): m for p, m in dom["disks"].items()}
            for path in q["writes"]:
                if path in modes:
                    out[path].append((node, q["domain"], modes[path] == "rw"))
    return out


def no_double_writer(record: Record) -> Verdict:
    """No exclusive disk open for writing by two running QEMUs anywhere (the nodes' /proc)."""
    name = "no double writer (QEMU processes)"
    if not _up(record):
        return _not_applicable(name, "no node is up")
    doubles = {
        path: who
        for path, who in writers_by_disk(record).items()
        if len(who) > 1 and any(exclusive for _, _, exclusive in who)
    }
    if doubles:
        text = "; ".join(
            f"{path} written by " + ", ".join(f"{d}@{n}" for n, d, _ in who)
            for path, who in sorted(doubles.items())
        )
        return Verdict(name, True, False, text)
    seen = writers_by_disk(record)
    return Verdict(
        name, True, True, f"{sum(len(w) for w in seen.values())} writer(s) on {len(seen)} disk(s)"
    )


def libvirt_and_data(record: Record) -> Verdict:
    """No double writer by libvirt's view and by what the writer guests left on the disks
    (lab.suite.steps.TwoNode.invariant, which saw the live disks: its verdict is stored)."""
    name = "no double writer (libvirt, data)"
    seen = record.get("invariant")
    if seen is None:
        return _not_applicable(name, "not run for this step")
    return Verdict(name, True, bool(seen["ok"]), seen["saw"])


def lock_disagreements(record: Record) -> list[str]:
    """Where the locks and the domains disagree on the nodes whose virtdlmd answers: a
    running domain's rw disk not held EX (shareable: SH/PR) on its node, or a lock whose
    domain is neither running nor paused there."""
    wrong = []
    for node, state in _up(record).items():
        held = state.get("locks")
        if not isinstance(held, list):
            continue
        domains = state.get("domains", {})
        have = {(lk["domain"], lk["path"]): lk["mode"] for lk in held}
        for dom_name, dom in domains.items():
            if dom["state"] != RUNNING:
                continue
            for path, mode in dom["disks"].items():
                if mode == "ro":
                    continue
                want = "EX" if mode == "rw" else "PR"
                if have.get((dom_name, path)) != want:
                    got = have.get((dom_name, path), "no lock")
                    wrong.append(f"{dom_name}@{node} runs with {path} ({mode}) but holds {got}")
        for (dom_name, path), mode in sorted(have.items()):
            dom = domains.get(dom_name)
            if dom is None or dom["state"] not in (RUNNING, PAUSED):
                wrong.append(
                    f"{node} holds {mode} on {path} for {dom_name}, which does not run there"
                )
    return wrong


def locks_agree(record: Record) -> Verdict:
    """Once settled (the runner observes again for up to SETTLE_S while they disagree),
    locks agree with domains."""
    name = "locks agree with domains"
    if record.get("lock_manager") != "dlm":
        return _not_applicable(name, f"lock manager {record.get('lock_manager')}")
    answering = [n for n, s in _up(record).items() if isinstance(s.get("locks"), list)]
    if not answering:
        return _not_applicable(name, "no virtdlmd answers")
    wrong = lock_disagreements(record)
    return Verdict(name, True, not wrong, "; ".join(wrong) or f"on {', '.join(answering)}")


def daemons_alive(record: Record) -> Verdict:
    """virtdlmd and libvirtd answer on every node that is up, but where the scenario keeps
    virtdlmd down on purpose."""
    name = "daemons alive"
    expected = record.get("expected", {})
    kept_down = set(expected.get("virtdlmd_down", []))
    wrong = []
    for node, state in _up(record).items():
        if state.get("libvirt_error"):
            wrong.append(f"libvirtd on {node}: {state['libvirt_error']}")
        locks = state.get("locks")
        if (
            record.get("lock_manager") == "dlm"
            and node not in kept_down
            and not isinstance(locks, list)
        ):
            wrong.append(f"virtdlmd on {node}: {(locks or {}).get('error', 'no answer')}")
    if not _up(record):
        return _not_applicable(name, "no node is up")
    return Verdict(name, True, not wrong, "; ".join(wrong) or "answering")


def quorate(record: Record) -> Verdict:
    """The cluster is quorate on every node while the scenario has every node up and whole."""
    name = "cluster quorate"
    expected = record.get("expected", {})
    if expected.get("down") or expected.get("cut"):
        return _not_applicable(name, "a node is off or cut on purpose")
    wrong = [
        f"{node}: {state.get('quorum', {}).get('detail', '?')}"
        for node, state in _up(record).items()
        if state.get("quorum", {}).get("quorate") is not True
    ]
    return Verdict(name, True, not wrong, "; ".join(wrong) or "quorate")


def journal(record: Record) -> Verdict:
    """No ERROR or Traceback in virtdlmd's or libvirtd's journal beyond the step's allow-list
    (the runner reads the lines; the allow-list applied is stored with them)."""
    name = "journals clean"
    lines = record.get("journal")
    if lines is None:
        return _not_applicable(name, "journals not read for this step")
    return Verdict(name, True, not lines, "; ".join(lines[:3]) or "nothing bad")


AUDITS: tuple[Callable[[Record], Verdict], ...] = (
    expectation,
    no_double_writer,
    libvirt_and_data,
    locks_agree,
    daemons_alive,
    quorate,
    journal,
)


def run_all(
    record: Record, audits: Iterable[Callable[[Record], Verdict]] = AUDITS
) -> list[Verdict]:
    return [audit(record) for audit in audits]


def failed(verdicts: Iterable[Verdict]) -> list[Verdict]:
    return [v for v in verdicts if v.applies and not v.ok]
