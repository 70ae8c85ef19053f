"""The coordinator's key epochs: nothing before the first broadcast, rotation after exactly
`rotate_after` committed broadcasts (one being the least), the committed-broadcast count, and
when an epoch's entries are due."""

from __future__ import annotations

import pytest

from aggregator.key_epochs import EpochReason, KeyEpochs

from .conftest import Parties


def test_before_the_first_broadcast_there_is_no_epoch_and_entries_are_due() -> None:
    epochs = KeyEpochs(rotate_after=3)
    assert epochs.current is None
    assert epochs.broadcasts == 0
    assert epochs.entries_due
    assert epochs.rotate_after == 3


@pytest.mark.parametrize("rotate_after", [0, -1])
def test_an_epoch_serves_at_least_one_broadcast(rotate_after: int) -> None:
    with pytest.raises(ValueError, match=f"at least one broadcast, not {rotate_after}$"):
        KeyEpochs(rotate_after)


def test_an_epoch_of_one_broadcast_rotates_after_each(parties: Parties) -> None:
    recipients = [parties.gateway.public]
    epochs = KeyEpochs(rotate_after=1)
    first, reason = epochs.for_broadcast(recipients)
    assert reason is EpochReason.START
    assert epochs.for_broadcast(recipients) == (first, None)  # nothing committed yet
    epochs.published(with_entries=True)
    assert epochs.broadcasts == 1
    second, reason = epochs.for_broadcast(recipients)
    assert reason is EpochReason.ROTATION
    assert second.epoch_id != first.epoch_id
    assert epochs.broadcasts == 0
    epochs.published(with_entries=True)
    third, reason = epochs.for_broadcast(recipients)
    assert reason is EpochReason.ROTATION
    assert third.epoch_id not in {first.epoch_id, second.epoch_id}


def test_rotation_comes_after_exactly_rotate_after_commits(parties: Parties) -> None:
    recipients = [parties.gateway.public, parties.other_gateway.public]
    epochs = KeyEpochs(rotate_after=3)
    first, reason = epochs.for_broadcast(recipients)
    assert (reason, epochs.broadcasts) == (EpochReason.START, 0)
    for committed in (1, 2):
        epochs.published(with_entries=committed == 1)
        assert epochs.broadcasts == committed
        assert epochs.for_broadcast(recipients) == (first, None)
    epochs.published(with_entries=False)
    assert epochs.broadcasts == 3
    rotated, reason = epochs.for_broadcast(recipients)
    assert reason is EpochReason.ROTATION
    assert rotated.epoch_id != first.epoch_id
    assert rotated.fingerprints == first.fingerprints
    assert epochs.broadcasts == 0


def test_entries_are_due_until_a_broadcast_with_them_is_committed(parties: Parties) -> None:
    recipients = [parties.gateway.public]
    epochs = KeyEpochs(rotate_after=10)

    def due() -> bool:  # read each time (mypy would narrow the property after one assert)
        return epochs.entries_due

    epochs.for_broadcast(recipients)
    assert due()
    epochs.published(with_entries=False)  # committed without them: still due
    assert due()
    epochs.published(with_entries=True)
    assert not due()
    epochs.published(with_entries=False)  # a later broadcast without them changes nothing
    assert not due()
    epochs.republish()
    assert due()
    epochs.published(with_entries=True)
    assert not due()
    _, reason = epochs.for_broadcast([parties.other_gateway.public])
    assert reason is EpochReason.RECIPIENTS_CHANGED
    assert due()  # a new epoch's entries have not been published
    assert epochs.broadcasts == 0
