"""Seeded fault campaigns on the lab: they must find what they exist to find.

- Under lock_manager = "nop" a campaign must find a double writer and shrink it to at most
  MAX_FOUND_STEPS steps; replaying the found file must fail under "nop" and pass under "dlm"
  (the control for the campaign, as the control run is for the tables).
- Under "dlm" a campaign with faults must pass every audit. `make campaign STEPS=50` runs a
  longer one by hand (README).

The campaigns run through lab.scenario's own command-line session (the same code as `make
campaign`), on this suite's connections; their files go under .lab/reports/campaign/.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator

import pytest

from lab.cluster import Lab
from lab.scenario import generate
from lab.scenario.__main__ import CAMPAIGN_DIR, Session, artifact_dir, say
from lab.scenario.campaign import Campaign, faults
from lab.scenario.run import allowed_log
from lab.scenario.schema import load
from lab.suite.steps import TwoNode

from .conftest import REPORT_DIR, Record

# Seeds whose scenarios reach a cross-node double writer within NOP_STEPS (the generator is
# deterministic: the same seed always draws the same steps).
NOP_SEEDS = (5,)
NOP_STEPS = 12
DLM_SEED, DLM_STEPS = 16, 12  # seed 16: kill -9 of QEMU and of virtdlmd twice, migrations
MAX_FOUND_STEPS = 4
SHRINK_BUDGET_S = 900.0
CAMPAIGN_TIMEOUT_S = 1800


def allow(seed: int, steps: int, manager: str) -> pytest.MarkDecorator:
    return pytest.mark.allow_log(*allowed_log(generate.generate(seed, steps, manager)))


@pytest.fixture
def session(lab: Lab, tn: TwoNode) -> Iterator[Session]:
    """The command line's session on the suite's connections; the lab's own lock manager is
    put back afterwards (a campaign's replays leave the one they ran)."""
    own = Session(lab=lab, tn=tn)
    yield own
    own.restore()


@pytest.mark.timeout(CAMPAIGN_TIMEOUT_S)
@pytest.mark.parametrize(
    "seed", [pytest.param(s, marks=allow(s, NOP_STEPS, "nop")) for s in NOP_SEEDS]
)
def test_a_nop_campaign_finds_a_double_writer_and_shrinks_it(
    session: Session, record: Record, seed: int
) -> None:
    out = artifact_dir(CAMPAIGN_DIR, f"nop-seed-{seed}")
    found_dir = os.path.join(REPORT_DIR, "found")
    campaign = Campaign(
        session, seed, NOP_STEPS, "nop", out, say, budget_s=SHRINK_BUDGET_S, found_dir=found_dir
    )
    finding = campaign.run()
    assert finding is not None, f"seed {seed}: no audit failed under nop in {NOP_STEPS} steps"
    assert finding.audits & {
        "no double writer (QEMU processes)",
        "no double writer (libvirt, data)",
    }, f"seed {seed}: the campaign failed, but not with a double writer: {finding.failure}"
    smallest, history = campaign.shrink(finding)
    path = campaign.write_found(smallest, history, finding.failure)
    steps = len(list(smallest.flat()))
    assert steps <= MAX_FOUND_STEPS, f"{path}: shrunk to {steps} steps only"
    found = load(path)
    # The found file fails under nop, and the lock manager protects the same steps.
    result, _ = session.replay(found, artifact_dir(CAMPAIGN_DIR, f"found-nop-{seed}"), quiet=True)
    assert not result.ok, f"{path} passed under nop on replay"
    under_dlm = dataclasses.replace(found, lab=dataclasses.replace(found.lab, lock_manager="dlm"))
    result, history = session.replay(
        under_dlm, artifact_dir(CAMPAIGN_DIR, f"found-dlm-{seed}"), quiet=True
    )
    assert result.ok, f"{path} under dlm: {result.failure} (history {history})"


@pytest.mark.timeout(CAMPAIGN_TIMEOUT_S)
@allow(DLM_SEED, DLM_STEPS, "dlm")
def test_a_dlm_campaign_with_faults_holds_every_audit(session: Session) -> None:
    out = artifact_dir(CAMPAIGN_DIR, f"dlm-seed-{DLM_SEED}")
    campaign = Campaign(session, DLM_SEED, DLM_STEPS, "dlm", out, say)
    assert faults(campaign.scenario()) >= 2, f"seed {DLM_SEED} draws too few faults"
    finding = campaign.run()
    assert finding is None, f"seed {DLM_SEED}: {finding.failure} (history {finding.history})"
