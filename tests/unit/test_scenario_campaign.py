"""Campaigns without a lab: the seeded grammar (lab.scenario.generate) and the shrinker
(lab.scenario.shrink), judged by synthetic failures instead of replays."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lab.nodes import NODE_NAMES
from lab.scenario.generate import HEAVY, RECOVERIES, VMS, allowed_moves, conflicting, generate
from lab.scenario.schema import (
    ANY,
    Item,
    LabNeeds,
    Scenario,
    Step,
    Together,
    dump,
    loads,
)
from lab.scenario.shrink import shrink

SEEDS = st.integers(min_value=0, max_value=2**32 - 1)
LENGTHS = st.integers(min_value=0, max_value=40)
QUICK = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LIGHT_ACTIONS = {
    "start",
    "destroy",
    "migrate",
    "suspend",
    "resume",
    "save",
    "restore",
    "reset",
    "kill-qemu",
    "kill-virtdlmd",
    "restart-libvirtd",
}
HEAVY_ACTIONS = set(HEAVY) | set(RECOVERIES)
REPLAY_S = 60.0  # what one synthetic replay costs on the fake clock

Key = tuple[str, str, str]  # (node, do, vm)


def keys(scenario: Scenario) -> list[Key]:
    return [(s.node, s.do, s.vm) for s in scenario.flat()]


def in_order(wanted: Sequence[Any], seen: Sequence[Any]) -> bool:
    """Whether `wanted` is a subsequence of `seen`."""
    rest = iter(seen)
    return all(any(w == x for x in rest) for w in wanted)


def group_steps(item: Item) -> tuple[Step, ...]:
    return item.steps if isinstance(item, Together) else (item,)


# -- the generator ------------------------------------------------------------------------------


@QUICK
@given(seed=SEEDS, steps=LENGTHS, heavy=st.booleans())
def test_the_same_seed_gives_the_same_scenario(seed: int, steps: int, heavy: bool) -> None:
    assert dump(generate(seed, steps, heavy=heavy)) == dump(generate(seed, steps, heavy=heavy))


def test_different_seeds_give_different_scenarios() -> None:
    assert len({dump(generate(seed, 20)) for seed in range(50)}) == 50


@QUICK
@given(
    seed=SEEDS,
    steps=LENGTHS,
    heavy=st.booleans(),
    manager=st.sampled_from(["dlm", "nop"]),
    node_count=st.integers(min_value=2, max_value=3),
)
def test_a_generated_scenario_reads_back_as_written_and_is_valid(
    seed: int, steps: int, heavy: bool, manager: str, node_count: int
) -> None:
    scenario = generate(seed, steps, manager, NODE_NAMES[:node_count], heavy)
    text = dump(scenario)
    again = loads(text, f"seed {seed}")
    assert dump(again) == text
    assert again.lab == LabNeeds(storage="nfs", lock_manager=manager, nodes=node_count)
    assert len(again.steps) == steps


@QUICK
@given(seed=SEEDS, steps=LENGTHS, heavy=st.booleans())
def test_steps_use_only_the_declared_vms_and_the_labs_nodes_and_expect_any(
    seed: int, steps: int, heavy: bool
) -> None:
    scenario = generate(seed, steps, heavy=heavy)
    flat = list(scenario.flat())
    assert {s.vm for s in flat if s.vm} == set(scenario.vms)
    assert set(scenario.vms) <= set(VMS)
    for s in flat:
        assert s.node in scenario.nodes and s.expect == ANY, s.describe()
        assert bool(s.vm) == ("vm" in s.action.needs), s.describe()
        assert s.to in ("", *scenario.nodes) and s.to != s.node, s.describe()
        assert s.file == (f"{s.vm}.save" if s.do in ("save", "restore") else ""), s.describe()
    for group in (item for item in scenario.steps if isinstance(item, Together)):
        first, second = group.steps
        assert first.node != second.node and conflicting(VMS[first.vm], VMS[second.vm])


@QUICK
@given(seed=SEEDS, steps=LENGTHS)
def test_without_heavy_there_is_no_heavy_fault(seed: int, steps: int) -> None:
    assert not {s.do for s in generate(seed, steps).flat()} & HEAVY_ACTIONS


@QUICK
@given(seed=SEEDS, steps=LENGTHS, node_count=st.integers(min_value=2, max_value=3))
def test_heavy_faults_are_undone_on_their_node_and_the_scenario_ends_whole(
    seed: int, steps: int, node_count: int
) -> None:
    owed: set[tuple[str, str]] = set()  # (recovery, node)
    for s in generate(seed, steps, nodes=NODE_NAMES[:node_count], heavy=True).flat():
        if s.do in HEAVY:
            assert (HEAVY[s.do], s.node) not in owed, s.describe()
            owed.add((HEAVY[s.do], s.node))
        elif s.do in RECOVERIES:
            assert (s.do, s.node) in owed, f"{s.describe()} undoes nothing"
            owed.remove((s.do, s.node))
        lost = {node for recovery, node in owed if recovery in ("power-on", "heal")}
        assert len(lost) <= 1, f"{s.describe()}: more than one node lost"
    assert not owed


def test_the_grammar_reaches_every_action_and_races_over_both_storages() -> None:
    light = [generate(seed, 40) for seed in range(20)]
    heavy = [generate(seed, 40, heavy=True) for seed in range(20)]
    assert {s.do for sc in light for s in sc.flat()} == LIGHT_ACTIONS
    assert {s.do for sc in heavy for s in sc.flat()} == LIGHT_ACTIONS | HEAVY_ACTIONS
    raced = {
        frozenset(s.vm for s in item.steps)
        for sc in light
        for item in sc.steps
        if isinstance(item, Together)
    }
    assert {frozenset({"c1", "c2"}), frozenset({"c3", "c4"})} <= raced  # NFS file, partition


@pytest.mark.parametrize(
    ("a", "b", "conflict"),
    [
        pytest.param("c1", "c2", True, id="both-write-one.qcow2-on-nfs"),
        pytest.param("c3", "c4", True, id="both-write-part1-on-the-block-device"),
        pytest.param("c2", "c3", True, id="c2-reads-two.qcow2-that-c3-writes"),
        pytest.param("c1", "c4", False, id="share.raw-is-shareable-for-both"),
        pytest.param("c1", "c3", False, id="no-disk-in-common"),
    ],
)
def test_which_campaign_vms_fight_over_a_disk(a: str, b: str, conflict: bool) -> None:
    assert conflicting(VMS[a], VMS[b]) is conflict is conflicting(VMS[b], VMS[a])


@pytest.mark.parametrize(
    ("pending", "left", "heavy", "has_faults", "has_light"),
    [
        pytest.param(0, 5, False, False, True, id="light-only-without-heavy"),
        pytest.param(0, 2, True, True, True, id="room-for-a-fault-and-its-recovery"),
        pytest.param(0, 1, True, False, True, id="no-room-for-a-recovery"),
        pytest.param(1, 2, True, False, True, id="one-owed-one-spare"),
        pytest.param(2, 2, True, False, False, id="only-recoveries-when-all-are-owed"),
    ],
)
def test_which_moves_may_be_drawn(
    pending: int, left: int, heavy: bool, has_faults: bool, has_light: bool
) -> None:
    moves = set(allowed_moves(pending, left, heavy))
    assert bool(moves & set(HEAVY)) is has_faults
    assert ("start" in moves) is has_light
    assert set(RECOVERIES) <= moves or not heavy


@pytest.mark.parametrize(
    ("args", "fact"),
    [
        pytest.param({"steps": -1}, "steps >= 0", id="negative-steps"),
        pytest.param({"lock_manager": "sanlock"}, "is not one of", id="unknown-lock-manager"),
        pytest.param({"nodes": ("node-b", "node-c")}, "first nodes", id="not-the-first-nodes"),
        pytest.param({"nodes": ("node-a",)}, "first nodes", id="one-node"),
    ],
)
def test_generate_refuses_what_the_lab_cannot_run(args: dict[str, Any], fact: str) -> None:
    with pytest.raises(ValueError, match=fact):
        generate(**{"seed": 1, "steps": 5, **args})


# -- the shrinker -------------------------------------------------------------------------------


class Replays:
    """A synthetic `fails`: counts the replays, advances a fake clock by one replay each,
    checks every candidate is a valid non-empty scenario, and remembers each verdict."""

    def __init__(self, fails: Callable[[Scenario], bool]) -> None:
        self.fails, self.now, self.calls = fails, 0.0, 0
        self.verdicts: dict[str, bool] = {}

    def clock(self) -> float:
        return self.now

    def __call__(self, candidate: Scenario) -> bool:
        text = dump(candidate)
        assert list(candidate.flat()), "a candidate with no step was tried"
        assert dump(loads(text)) == text
        assert text not in self.verdicts, "a candidate was tried twice"
        self.calls += 1
        self.now += REPLAY_S
        self.verdicts[text] = self.fails(candidate)
        return self.verdicts[text]

    def shrink(self, scenario: Scenario, budget_s: float = 1e9) -> Scenario:
        heard: list[bool] = []
        smallest = shrink(scenario, self, budget_s, self.clock, lambda _c, v: heard.append(v))
        assert heard == list(self.verdicts.values())  # on_try hears every replay, in order
        assert dump(smallest) == dump(scenario) or self.verdicts.get(dump(smallest)) is True
        assert in_order(list(smallest.flat()), list(scenario.flat()))
        return smallest


def starts_c1_then_c2(scenario: Scenario) -> bool:
    return in_order([("node-a", "start", "c1"), ("node-b", "start", "c2")], keys(scenario))


def first_seed(predicate: Callable[[Scenario], bool], steps: int) -> int:
    return next(seed for seed in range(1000) if predicate(generate(seed, steps)))


def test_shrinks_a_40_step_campaign_to_the_two_steps_that_fail() -> None:
    scenario = generate(first_seed(starts_c1_then_c2, 40), 40)
    replays = Replays(starts_c1_then_c2)
    smallest = replays.shrink(scenario)
    assert [(s.node, s.do, s.vm) for s in smallest.steps if isinstance(s, Step)] == [
        ("node-a", "start", "c1"),
        ("node-b", "start", "c2"),
    ]
    assert len(smallest.steps) == 2 and list(smallest.vms) == ["c1", "c2"]
    assert 0 < replays.calls < len(scenario.steps)


@pytest.mark.parametrize("replays_allowed", [0, 1, 5])
def test_shrinking_stops_when_the_budget_is_spent(replays_allowed: int) -> None:
    scenario = generate(first_seed(starts_c1_then_c2, 40), 40)
    replays = Replays(starts_c1_then_c2)
    smallest = replays.shrink(scenario, budget_s=replays_allowed * REPLAY_S)
    assert replays.calls == replays_allowed
    assert starts_c1_then_c2(smallest)
    if not replays_allowed:
        assert smallest is scenario


A1, A2 = Step("node-a", "start", "c1"), Step("node-a", "destroy", "c1")
B1, B2 = Step("node-b", "start", "c3"), Step("node-b", "destroy", "c3")
C1 = Step("node-b", "start", "c2")


def vm_count(scenario: Scenario, vm: str) -> int:
    return sum(s.vm == vm for s in scenario.flat())


@pytest.mark.parametrize(
    ("items", "fails", "smallest"),
    [
        pytest.param(
            [B1, Together((A1, C1)), B2],
            lambda s: in_order([A1, C1], list(s.flat())),
            [A1, C1],
            id="a-race-not-needed-becomes-two-steps",
        ),
        pytest.param(
            [B1, Together((A1, C1)), B2],
            lambda s: any(isinstance(i, Together) for i in s.steps),
            [Together((A1, C1))],
            id="a-race-that-is-needed-stays",
        ),
        pytest.param(
            [A1, B1, A2, B2],
            lambda s: vm_count(s, "c1") == 2 and vm_count(s, "c3") % 2 == 0,
            [A1, A2],
            id="dropping-a-vm-takes-what-single-items-cannot",
        ),
        pytest.param(
            [A1, B1, A2, B2],
            lambda s: len(list(s.flat())) == 4,
            [A1, B1, A2, B2],
            id="nothing-smaller-fails-the-input-stays",
        ),
    ],
)
def test_the_shrinker_passes(
    items: list[Item], fails: Callable[[Scenario], bool], smallest: list[Item]
) -> None:
    scenario = Scenario(LabNeeds(), dict(VMS), ()).with_steps(items)
    assert list(Replays(fails).shrink(scenario).steps) == smallest


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=SEEDS, steps=st.integers(min_value=2, max_value=30), data=st.data())
def test_a_campaign_shrinks_to_exactly_the_steps_a_failure_needs(
    seed: int, steps: int, data: st.DataObject
) -> None:
    scenario = generate(seed, steps, heavy=data.draw(st.booleans()))
    flat = list(scenario.flat())
    picked = data.draw(st.sets(st.integers(0, len(flat) - 1), min_size=1, max_size=3))
    needed = [flat[i] for i in sorted(picked)]
    smallest = Replays(lambda s: in_order(needed, list(s.flat()))).shrink(scenario)
    assert list(smallest.steps) == needed
