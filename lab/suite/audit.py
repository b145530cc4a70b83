"""Audits run after every black-box test, and the log watcher behind them.

- no two running domains hold one exclusive disk read/write;
- the lock daemon is alive and answers;
- no ERROR, Traceback or lost lock appeared in its log since the test began (tests may allow
  lines): the local tier's virtdlmd log here (LogWatch), the nodes' journals in
  lab.suite.journal, both by the rule BAD_LINE.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import dataclass, field

from ..wait import LabError

# A log line that fails a test unless the test allows it: an error or a traceback in the
# text, or a lock reported lost (a lock lost under a running VM is the failure this project
# exists to prevent).
BAD_LINE = re.compile(
    r"\b(?:ERROR|CRITICAL)\b|Traceback \(most recent call last\)"
    r"|(?i:\blocks?\b.{0,80}\blost\b|\blost\b.{0,80}\blocks?\b)"
)


class AuditFailure(LabError):
    pass


def rw_exclusive_disks(domain_xml: str) -> list[str]:
    """Paths of the disks a domain opens read/write without <shareable/>."""
    root = ET.fromstring(domain_xml)
    out = []
    for disk in root.findall("./devices/disk"):
        source = disk.find("source")
        path = source.get("file") or source.get("dev") if source is not None else None
        if not path or disk.find("readonly") is not None or disk.find("shareable") is not None:
            continue
        out.append(os.path.realpath(path))
    return out


def double_writers(running: dict[str, str]) -> dict[str, list[str]]:
    """{disk: [domains]} for every exclusive disk that more than one running domain writes.

    `running` maps "node/domain" to that domain's live XML.
    """
    writers: dict[str, list[str]] = defaultdict(list)
    for who, xml in running.items():
        for path in rw_exclusive_disks(xml):
            writers[path].append(who)
    return {path: who for path, who in writers.items() if len(who) > 1}


@dataclass
class LogWatch:
    """Remembers where a log ended, and finds bad lines written after that."""

    path: str
    allow: list[str] = field(default_factory=list)
    offset: int = 0
    BAD = BAD_LINE

    def arm(self) -> LogWatch:
        self.offset = os.path.getsize(self.path) if os.path.exists(self.path) else 0
        return self

    def new_lines(self) -> list[str]:
        if not os.path.exists(self.path):
            return []
        with open(self.path, encoding="utf-8", errors="replace") as f:
            if os.path.getsize(self.path) < self.offset:
                self.offset = 0  # the log was replaced (daemon restarted with a new file)
            f.seek(self.offset)
            return f.read().splitlines()

    def bad_lines(self) -> list[str]:
        return [
            line
            for line in self.new_lines()
            if self.BAD.search(line) and not any(a in line for a in self.allow)
        ]
