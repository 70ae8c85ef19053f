"""The gateway's side of one secure-aggregation round, without I/O: it checks the round's
announcement against the gateway identities it was enrolled with, then answers each frame."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from gateway.errors import GatewayError
from pqlink import DecodeError, Identity, Registry, Role
from pqlink.secagg import (
    RoundConfig,
    RoundKeys,
    SecAggClient,
    SecAggError,
    SecAggEvent,
    SecAggParameterError,
    SecAggStateError,
    decode_bundle,
)
from wire.secagg import SecAggFrame, SecAggKind, SecureRoundAnnouncement


class SecureRoundRefusedError(GatewayError):
    """An announcement this gateway will not take part in (unknown peer, bad parameters)."""


@dataclass(frozen=True, slots=True)
class Rejected:
    """A protocol message refused by the client; the round goes on without it."""

    kind: SecAggKind
    reason: str
    detail: str


@dataclass
class Step:
    """What one incoming frame produced: frames to send, refusals, and whether it is over."""

    outgoing: list[SecAggFrame] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    events: list[SecAggEvent] = field(default_factory=list)
    finished: bool = False


def join_round(
    announcement: SecureRoundAnnouncement, me: Identity, peers: Registry
) -> tuple[RoundConfig, int]:
    """The round's configuration and this gateway's id, if every participant is a gateway
    this gateway knows (peers: the registry handed out at enrolment, never the coordinator's
    word at round time: an active coordinator could otherwise invent participants)."""
    try:
        config = announcement.round_config()
    except SecAggParameterError as exc:
        raise SecureRoundRefusedError(f"announcement: {exc}") from None
    if me.name not in announcement.participants:
        raise SecureRoundRefusedError(f"{me.name} is not a participant")
    known = {p.name for p in peers.active(Role.GATEWAY)}
    unknown = sorted(set(announcement.participants) - known - {me.name})
    if unknown:
        raise SecureRoundRefusedError(f"participants not enrolled as gateways: {unknown}")
    return config, announcement.participants[me.name]


class SecureUpdateSession:
    """Runs a SecAggClient over frames: fresh keys per round (the client makes them), the
    update clipped, quantised, noised and masked once the round reaches the input stage."""

    def __init__(
        self,
        announcement: SecureRoundAnnouncement,
        me: Identity,
        peers: Registry,
        *,
        advertised: RoundKeys | None = None,
    ) -> None:
        """`advertised`: the keys this gateway made ahead for this round and whose advert it
        sent with its previous answer (a pipelined round starts at the neighbours' adverts)."""
        config, my_id = join_round(announcement, me, peers)
        self.announcement = announcement
        self.config = config
        self.client_id = my_id
        keys = {
            u: peers.lookup(name).verify_key
            for name, u in announcement.participants.items()
            if name != me.name
        }
        keys[my_id] = me.public.verify_key
        try:
            self.client = SecAggClient(config, my_id, me.signing_key, keys, advertised=advertised)
        except SecAggStateError as exc:
            raise SecureRoundRefusedError(str(exc)) from None
        self._me = me
        self.encoded: npt.NDArray[np.uint64] | None = None
        self._rng = np.random.default_rng()

    @property
    def round(self) -> int:
        return self.announcement.round

    def start(self) -> SecAggFrame:
        return SecAggFrame(SecAggKind.ADVERT, self.round, self.client.advertise())

    def keys_ahead(self) -> tuple[RoundKeys, SecAggFrame]:
        """Fresh keys for the next round, made while idle, and their advert to send now; the
        coordinator uses them only if it opens that very round pipelined."""
        keys = RoundKeys(self.round + 1, self.client_id, self._me.signing_key)
        return keys, SecAggFrame(SecAggKind.ADVERT, keys.round_id, keys.advert)

    def set_update(self, update: npt.ArrayLike, samples: int = 0) -> None:
        """The flat update to contribute (before clipping) and how many samples it was
        trained on: encoded now, masked when the shares are in. In a weighted round the
        count becomes a weight hidden in the masked vector; it never travels alone."""
        x = np.asarray(update, dtype=np.float64).reshape(-1)
        a = self.announcement
        if x.size != a.dimension:
            raise SecureRoundRefusedError(f"update of {x.size} values, round of {a.dimension}")
        weighting = a.weighting
        if weighting is not None:
            x = weighting.extend(x, samples, a.clip)
        self.encoded = self.config.encoding.encode(x, self._rng)

    def handle(self, frame: SecAggFrame) -> Step:
        """One frame from the coordinator. Refused items are reported, never raised: a forged
        advert costs its sender a neighbour, not this gateway its round."""
        step = Step()
        if frame.round != self.round:
            step.rejected.append(Rejected(frame.kind, "wrong_round", f"round {frame.round}"))
            return step
        c = self.client
        try:
            if frame.kind is SecAggKind.ADVERTS:
                self._each(frame, c.receive_advert, step)
                step.outgoing.append(self._out(SecAggKind.SHARE_KEYS, c.key_shares()))
            elif frame.kind is SecAggKind.SHARES:
                self._each(frame, c.receive_key_shares, step)
                if self.encoded is None:
                    raise SecureRoundRefusedError("no update to contribute")
                step.outgoing.append(
                    self._out(SecAggKind.MASKED_INPUT, c.masked_input(self.encoded))
                )
            elif frame.kind is SecAggKind.UNMASK_REQUEST:
                step.outgoing.append(self._out(SecAggKind.UNMASK_RESPONSE, c.unmask(frame.body)))
                step.finished = True
            elif frame.kind is SecAggKind.ABORTED:
                step.finished = True
            else:
                step.rejected.append(Rejected(frame.kind, "wrong_direction", frame.kind.name))
        except (SecAggError, SecAggStateError, DecodeError, SecureRoundRefusedError) as exc:
            # a refused unmasking request, or a stage this client cannot complete: it stops
            reason = getattr(exc, "reason", type(exc).__name__)
            step.rejected.append(Rejected(frame.kind, str(reason), str(exc)))
            step.finished = True
        step.events.extend(c.events)
        c.events.clear()
        return step

    def _out(self, kind: SecAggKind, body: bytes) -> SecAggFrame:
        return SecAggFrame(kind, self.round, body)

    def _each(self, frame: SecAggFrame, receive: Callable[[bytes], None], step: Step) -> None:
        round_id, items = decode_bundle(frame.body)
        if round_id != self.round:
            raise SecureRoundRefusedError(f"bundle of round {round_id}")
        for item in items:
            try:
                receive(item)
            except (SecAggError, SecAggStateError, DecodeError) as exc:
                step.rejected.append(Rejected(frame.kind, str(exc.reason), str(exc)))
