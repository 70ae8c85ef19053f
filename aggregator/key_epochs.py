"""The coordinator's key epochs for global-model broadcasts: when to start a new one (at start,
when the enrolled gateways change, after a number of broadcasts) and when to publish its entries.

The epoch lives in memory only: its key never touches disk, and a restarted coordinator starts
a new epoch."""

from __future__ import annotations

import enum
from collections.abc import Sequence

from pqlink import PublicIdentity
from pqlink.broadcast import BroadcastEpoch, new_epoch


class EpochReason(enum.StrEnum):
    """Why a new key epoch started (logged with `key_epoch_started`)."""

    START = "start"
    RECIPIENTS_CHANGED = "recipients_changed"
    ROTATION = "rotation"


class KeyEpochs:
    """The current key epoch and what the broker has of it. Not thread-safe: the coordinator
    announces from one thread."""

    def __init__(self, rotate_after: int) -> None:
        if rotate_after < 1:
            raise ValueError(f"a key epoch serves at least one broadcast, not {rotate_after}")
        self.rotate_after = rotate_after
        self.current: BroadcastEpoch | None = None
        #: Broadcasts of the current epoch committed to the broker.
        self.broadcasts = 0
        self._entries_published = False

    def for_broadcast(
        self, recipients: Sequence[PublicIdentity]
    ) -> tuple[BroadcastEpoch, EpochReason | None]:
        """The epoch the next broadcast belongs to, and the reason if it is a new one. A
        recipient set that differs in any fingerprint (enrolment, revocation, a re-keyed
        gateway) starts a new epoch: a revoked gateway cannot open the next body."""
        fingerprints = frozenset(r.fingerprint for r in recipients)
        reason = None
        if self.current is None:
            reason = EpochReason.START
        elif fingerprints != self.current.fingerprints:
            reason = EpochReason.RECIPIENTS_CHANGED
        elif self.broadcasts >= self.rotate_after:
            reason = EpochReason.ROTATION
        if reason is not None:
            self.current = new_epoch(recipients)
            self.broadcasts = 0
            self._entries_published = False
        assert self.current is not None
        return self.current, reason

    @property
    def entries_due(self) -> bool:
        """Must the next broadcast carry the epoch's entries (none committed yet)?"""
        return not self._entries_published

    def published(self, *, with_entries: bool) -> None:
        """A broadcast of the current epoch was committed, with its entries or not."""
        self.broadcasts += 1
        self._entries_published = self._entries_published or with_entries

    def republish(self) -> None:
        """Publish the entries again with the next broadcast: after a new broker connection,
        whose broker may not hold what the previous one committed (a reset node or cluster).
        A gateway keeps one entry per epoch id, so a second copy costs it nothing."""
        self._entries_published = False
