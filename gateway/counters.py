"""The daemon's own counters, one typed value each: what `iomt-gateway status` and the
metrics report; each part increments only the counters it owns."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class CommitCounters:
    """Owned by the commit pipeline."""

    records_stored: int = 0
    records_duplicate: int = 0
    rr_beats_stored: int = 0
    rr_beats_duplicate: int = 0
    commits: int = 0
    commit_failures: int = 0  # commits refused by a full disk or an I/O error, then retried
    acks_sent: int = 0  # sealed acknowledgements published to wearables
    retention_deleted: int = 0


@dataclass
class ConnectionCounters:
    """Owned by the daemon's connection loop and handshake dispatch."""

    handshakes_ok: int = 0
    handshakes_failed: int = 0
    broker_connects: int = 0
    rejected: Counter[str] = field(default_factory=Counter)  # handshakes refused, by reason

    def status(self) -> dict[str, Any]:
        return {
            "handshakes_ok": self.handshakes_ok,
            "handshakes_failed": self.handshakes_failed,
            "broker_connects": self.broker_connects,
        }
