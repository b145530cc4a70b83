"""The data audit: after every step, what the writer guests left on the exclusive disks.

libvirt's view (lab.suite.audit.double_writers) infers a double writer from the running
domains' XML; this audit looks at the disks themselves. Every running writer guest
(lab.guest.writer: a domain that boots the writer) writes its record to LBA 0 of each
exclusive disk and reads it back; a writer that reads back another's record leaves a
collision marker. So a double write shows as a collision marker or a torn record. When
libvirt already shows two running writers of one disk (the control run), the audit waits
for the data to show it too, so the failure carries the disk's own evidence. Across steps
the audit also keeps each disk's history of writers: a writer (id and boot nonce) that is
seen again with a higher counter after another writer was seen in between advanced while
that other one wrote too - a double write even if no writer caught it.
"""

from __future__ import annotations

import contextlib
import os
import xml.etree.ElementTree as ET
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ..guest.disks import Evidence
from ..guest.writer import FWCFG_NAME
from ..wait import WaitTimeout, wait_for
from .audit import AuditFailure, rw_exclusive_disks

DATA_EVIDENCE_WAIT_S = 60.0  # for a second writer to boot and collide (nested TCG)
DATA_POLL_S = 1.0

Reader = Callable[[list[str]], list[Evidence]]


class DataAuditFailure(AuditFailure):
    """Two writers wrote one exclusive disk: the disk itself shows it."""

    def __init__(self, message: str, summary: str) -> None:
        super().__init__(message)
        self.summary = summary


def is_writer(domain_xml: str) -> bool:
    """Whether the domain boots the writer guest (it carries the writer's fw_cfg entry)."""
    root = ET.fromstring(domain_xml)
    return any(e.get("name") == FWCFG_NAME for e in root.iterfind("./sysinfo/entry"))


def writer_disks(running: Mapping[str, str]) -> dict[str, list[str]]:
    """{exclusive disk: ["node/domain", ...]} written by running writer guests."""
    out: dict[str, list[str]] = defaultdict(list)
    for who, xml in running.items():
        if is_writer(xml):
            for path in rw_exclusive_disks(xml):
                out[path].append(who)
    return dict(out)


Writer = tuple[str, int]  # (writer id, boot nonce): one boot of one writer guest


@dataclass
class History:
    """Per disk, the writers seen on it in the order they were seen, with their last counter.
    Reset when the disks are wiped (between tests)."""

    seen: dict[str, list[tuple[Writer, int]]] = field(default_factory=dict)

    def note(self, evidence: list[Evidence]) -> list[str]:
        """Add these samples; what they prove about a double write (A, then B, then A again
        with a higher counter)."""
        out = []
        for e in evidence:
            if e.record is None:
                continue
            who, counter = (e.record.writer, e.record.nonce), e.record.counter
            past = self.seen.setdefault(e.path, [])
            if past and past[-1][0] == who:
                past[-1] = (who, counter)
                continue
            earlier = [c for w, c in past if w == who]
            if earlier and counter > earlier[-1]:
                between = sorted({w[0] for w, _ in past[past.index((who, earlier[-1])) + 1 :]})
                out.append(
                    f"{os.path.basename(e.path)}: writer {who[0]} went on writing (counter "
                    f"{earlier[-1]} -> {counter}) after {', '.join(between)} wrote the disk"
                )
            past.append((who, counter))
        return out

    def clear(self) -> None:
        self.seen.clear()


def problems(evidence: list[Evidence]) -> list[str]:
    """What on these disks proves a double write."""
    out = []
    for e in evidence:
        name = os.path.basename(e.path)
        c = e.collision
        if c is not None:
            seen = (
                f"{c.seen.writer}'s record (nonce {c.seen.nonce}, counter {c.seen.counter})"
                if c.seen
                else "a record it could not parse"
            )
            out.append(
                f"{name}: writer {c.writer} (nonce {c.nonce}, at its write {c.counter}) "
                f"read back {seen}: two writers wrote the disk"
            )
        if e.record is not None and not e.record.checksum_ok:
            out.append(f"{name}: the record of {e.record.writer} is torn (bad checksum)")
    return out


def summarize(evidence: list[Evidence]) -> str:
    """'one.qcow2: vm-1 #1234' per disk, as the report shows it."""
    parts = []
    for e in evidence:
        name = os.path.basename(e.path)
        if e.collision is not None:
            who = e.collision.seen.writer if e.collision.seen else "?"
            parts.append(f"{name}: COLLISION {e.collision.writer} saw {who}")
        elif e.record is not None:
            parts.append(f"{name}: {e.record.writer} #{e.record.counter}")
        else:
            parts.append(f"{name}: not written yet")
    return "; ".join(parts)


def audit(
    read: Reader,
    running: Mapping[str, str],
    doubles: Mapping[str, list[str]],
    after: str,
    wait_s: float = DATA_EVIDENCE_WAIT_S,
    history: History | None = None,
) -> str:
    """Read the exclusive disks of the running writers; raise DataAuditFailure on a double
    write. Where libvirt shows two writers of a disk, wait up to wait_s for its data to."""
    disks = writer_disks(running)
    if not disks:
        return ""
    evidence: list[Evidence] = []
    bad: list[str] = []

    def sample() -> bool:
        nonlocal evidence, bad
        evidence = read(sorted(disks))
        bad = problems(evidence) + (history.note(evidence) if history is not None else [])
        return bool(bad)

    contested = sorted(set(doubles) & set(disks))
    if not sample() and contested:
        # libvirt shows two writers of these disks: give the data time to show it too
        with contextlib.suppress(WaitTimeout):
            wait_for(sample, wait_s, DATA_POLL_S, f"the data on {contested} to show it")
    summary = summarize(evidence)
    if bad:
        who = {os.path.basename(p): w for p, w in disks.items()}
        raise DataAuditFailure(
            f"double write after {after}: {'; '.join(bad)} (running writers: {who})", summary
        )
    return summary
