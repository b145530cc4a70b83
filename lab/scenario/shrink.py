"""Shrinking a failing scenario with delta debugging (Zeller and Hildebrandt's ddmin), so that
what a campaign finds is a handful of steps a person can read and replay.

Each candidate is run through a ``fails`` predicate, which in a campaign replays it on the lab
and takes minutes; so a candidate is never tried twice (results are kept by its ``dump``
text), a candidate with no step is never tried, and the search stops when its time budget is
spent, returning the smallest scenario seen to fail so far. The passes, in order:

1. ddmin over the top-level items (steps and together groups);
2. each together group split into its steps, one after the other (a race that is not needed);
3. each VM dropped with every step that uses it (steps a pass over items cannot take apart);
4. ddmin once more, when passes 2 or 3 changed anything.

Every candidate's steps are a subsequence of the input's, and it declares only the VMs they
use (Scenario.with_steps), so it is as valid as the input.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence

from .schema import Item, Scenario, Step, Together, dump


class _BudgetSpent(Exception):
    """The time budget ran out: the search unwinds and keeps what it has."""


class _Search:
    """The scenario being shrunk: the smallest seen to fail so far, and every verdict."""

    def __init__(
        self,
        scenario: Scenario,
        fails: Callable[[Scenario], bool],
        deadline: float,
        clock: Callable[[], float],
        on_try: Callable[[Scenario, bool], None] | None,
    ) -> None:
        self.template, self.current, self.current_key = scenario, scenario, dump(scenario)
        self.fails, self.deadline, self.clock, self.on_try = fails, deadline, clock, on_try
        self.verdicts: dict[str, bool] = {self.current_key: True}  # the input counts as failing

    @property
    def items(self) -> list[Item]:
        return list(self.current.steps)

    def try_items(self, items: Sequence[Item]) -> bool:
        """Whether these items still fail; if they do, they become the current scenario."""
        if not items:
            return False
        candidate = self.template.with_steps(tuple(items))
        key = dump(candidate)
        if key not in self.verdicts:
            if self.clock() >= self.deadline:
                raise _BudgetSpent
            failed = self.fails(candidate)
            self.verdicts[key] = failed
            if self.on_try is not None:
                self.on_try(candidate, failed)
        if self.verdicts[key] and key != self.current_key:
            self.current, self.current_key = candidate, key
            return True
        return False


def split(items: Sequence[Item], n: int) -> list[list[Item]]:
    """The items in n consecutive chunks whose sizes differ by one at most."""
    size, extra = divmod(len(items), n)
    chunks, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        chunks.append(list(items[start:end]))
        start = end
    return chunks


def _ddmin(search: _Search) -> None:
    """Zeller's ddmin over the current items: try each chunk alone, then the rest without
    each chunk, and cut finer while neither fails, down to single items."""
    n = 2
    while len(items := search.items) >= 2:
        chunks = split(items, min(n, len(items)))
        if any(search.try_items(chunk) for chunk in chunks):
            n = 2
            continue
        complements = (
            [x for j, chunk in enumerate(chunks) if j != i for x in chunk]
            for i in range(len(chunks))
        )
        if any(search.try_items(rest) for rest in complements):
            n = max(n - 1, 2)
            continue
        if n >= len(items):
            return
        n = min(2 * n, len(items))


def _split_groups(search: _Search) -> None:
    """Each together group replaced by its steps one after the other, where that still fails."""
    i = 0
    while i < len(items := search.items):
        group = items[i]
        if isinstance(group, Together):
            search.try_items([*items[:i], *group.steps, *items[i + 1 :]])
        i += 1


def without_vm(items: Sequence[Item], vm: str) -> list[Item]:
    """The items without any step on this VM; a group left with one step becomes that step."""
    out: list[Item] = []
    for item in items:
        if isinstance(item, Step):
            if item.vm != vm:
                out.append(item)
            continue
        kept = tuple(s for s in item.steps if s.vm != vm)
        if len(kept) >= 2:
            out.append(Together(kept, item.line))
        elif kept:
            out.append(kept[0])
    return out


def _drop_vms(search: _Search) -> None:
    for vm in list(search.current.vms):
        if any(s.vm == vm for s in search.current.flat()):
            search.try_items(without_vm(search.items, vm))


def shrink(
    scenario: Scenario,
    fails: Callable[[Scenario], bool],
    budget_s: float,
    clock: Callable[[], float] = time.monotonic,
    on_try: Callable[[Scenario, bool], None] | None = None,
) -> Scenario:
    """The smallest scenario found, within budget_s, that `fails` says still fails (the input
    itself if none). The budget is checked before each new candidate, so the last one tried
    may end past it. on_try hears each candidate tried and its verdict (progress); what
    `fails` raises goes to the caller."""
    search = _Search(scenario, fails, clock() + budget_s, clock, on_try)
    with contextlib.suppress(_BudgetSpent):
        _ddmin(search)
        before = search.current_key
        _split_groups(search)
        _drop_vms(search)
        if search.current_key != before:
            _ddmin(search)
    return search.current
