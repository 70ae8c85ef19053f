"""Adverts that gateways send for the next secure round with their last unmasking answer:
kept, checked, for that one round only, so that its opening can skip the advert exchange."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from pqlink.keys import VerifyKey
from pqlink.secagg import ReplayedMessageError, check_advert

_LOG = logging.getLogger("aggregator.adverts_ahead")


class AdvertsAhead:
    """The adverts offered for one future round, by gateway name with the protocol id each
    advert names. An advert serves only the round it names: a round other than the one kept
    expires them, so a round that never happens leaves nothing behind."""

    def __init__(self) -> None:
        self.round = -1  # the round adverts are kept for; -1: none expected
        self._adverts: dict[str, tuple[int, bytes]] = {}

    def __len__(self) -> int:
        return len(self._adverts)

    def expect(self, round_id: int) -> None:
        """Adverts for `round_id` are on their way (its predecessor completed): keep those
        already offered for it, drop any other."""
        if round_id != self.round:
            self._drop(round_id)
            self.round = round_id

    def expire(self) -> None:
        """Nothing kept and nothing expected: the next round opens with the full setup."""
        self._drop(-1)
        self.round = -1

    def offer(self, round_id: int, name: str, key: VerifyKey, data: bytes) -> None:
        """Keep `name`'s advert for `round_id` if its own signature holds; SecAggError
        subclasses otherwise (forged, malformed, a second one from the same gateway)."""
        sender = check_advert(data, round_id, key)
        self.expect(round_id)
        if name in self._adverts:
            raise ReplayedMessageError(f"second advert of {name} for round {round_id}")
        self._adverts[name] = (sender, bytes(data))

    def missing(self, participants: Mapping[str, int]) -> int:
        return sum(1 for name in participants if name not in self._adverts)

    def take(self, round_id: int, participants: Mapping[str, int]) -> dict[int, bytes] | None:
        """Every participant's advert for `round_id` by protocol id, if all of them are here
        and name the id the round gives them; None otherwise (the round opens with the full
        setup). Either way nothing stays kept: keys serve one round."""
        if round_id != self.round:
            self.expire()
            return None
        kept, self._adverts = self._adverts, {}
        self.round = -1
        out: dict[int, bytes] = {}
        for name, u in participants.items():
            advert = kept.get(name)
            if advert is None or advert[0] != u:
                return None
            out[u] = advert[1]
        return out

    def _drop(self, round_id: int) -> None:
        if self._adverts:
            _LOG.info(
                "secagg_adverts_expired round=%d for_round=%d adverts=%d",
                round_id,
                self.round,
                len(self._adverts),
            )
        self._adverts = {}
