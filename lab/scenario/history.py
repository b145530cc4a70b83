"""The history: the authoritative record of what a run did and saw (JSON Lines).

A seed cannot make a distributed run repeat itself, so what happened is what the history
says (Jepsen's lesson). Line 1 is the header (``kind: scenario``): the scenario as run and
the lab it ran on. Then one line per step or ``together`` group (``kind: step``): its index,
wall-clock and monotonic time, and per step the node, action, arguments, expectation,
outcome, refusing layer, libvirt code, holder, message and seconds; after it, the state
observed on every node (lab.scenario.audits explains its fields), what was expected to be
down, and the audits' verdicts. ``check`` runs the audits again on a stored history;
``to_scenario`` turns it back into a scenario whose expectations are what was observed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from . import audits
from .schema import DiskUse, Scenario, ScenarioError, Step, Together, dump, loads

HEADER, STEP = "scenario", "step"


def header(scenario: Scenario, lab: dict[str, Any]) -> dict[str, Any]:
    return {"kind": HEADER, "source": scenario.source, "scenario": dump(scenario), "lab": lab}


def read(path: str) -> Iterator[dict[str, Any]]:
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as err:
                    raise ScenarioError(path, number, f"not a history line: {err.msg}") from err
    except OSError as err:
        raise ScenarioError(path, None, f"cannot read the history: {err.strerror}") from err


def split(path: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    lines = list(read(path))
    head, steps = (lines[0], lines[1:]) if lines else ({}, [])
    if head.get("kind") != HEADER:
        raise ScenarioError(path, 1, "a history starts with its scenario line (kind: scenario)")
    bad = next((i for i, s in enumerate(steps, 2) if s.get("kind") != STEP), None)
    if bad is not None:
        raise ScenarioError(path, bad, "expected a step line (kind: step)")
    return head, steps


def check(path: str) -> list[tuple[int, list[audits.Verdict]]]:
    """The audits run again on every step of a stored history: [(index, failed verdicts)]
    for the steps where any failed."""
    _head, steps = split(path)
    out = []
    for record in steps:
        bad = audits.failed(audits.run_all(record))
        if bad:
            out.append((int(record["index"]), bad))
    return out


def to_scenario(path: str) -> Scenario:
    """The scenario the history ran, with each step expecting what was observed (the
    outcome, and for a lock-manager refusal the code and holder): replaying it checks that
    the same thing happens again."""
    head, records = split(path)
    scenario = loads(head["scenario"], path)
    items = []
    for record in records:
        observed = [_observed(s) for s in record["steps"]]
        items.append(observed[0] if len(observed) == 1 else Together(tuple(observed)))
    return scenario.with_steps(items) if items else scenario


def _observed(s: dict[str, Any]) -> Step:
    args = s["args"]
    refused = s["outcome"] not in ("ok",)

    def disk(d: dict[str, str]) -> DiskUse:
        return DiskUse(d["mode"], d.get("disk", ""), d.get("path", ""))

    return Step(
        node=s["node"],
        do=s["do"],
        vm=args.get("vm", ""),
        to=args.get("to", ""),
        disk=disk(args["disk"]) if "disk" in args else None,
        disks=tuple(disk(d) for d in args["disks"]) if "disks" in args else None,
        file=args.get("file", ""),
        seconds=float(args.get("seconds", 0.0)),
        direction=args.get("direction", "both"),
        expect=s["outcome"],
        code=s["libvirt_code"] if refused and s["outcome"] == "lock-manager" else None,
        holder=s["holder_seen"] if refused and s["outcome"] == "lock-manager" else "",
    )
