"""Aggregator logic without a broker: strategies, update validation (forged, replayed, stale,
wrong shape, NaN, oversized), worker partials, and exactly-once rounds that survive restarts."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from aggregator.config import ConfigError, load_config, parse_config
from aggregator.key_epochs import EpochReason, KeyEpochs
from aggregator.partials import Partial, PartialError, Rejection, make_partial
from aggregator.rounds import CloseReason, RoundCoordinator, RoundPolicy, quorum_for
from aggregator.strategies import (
    Contribution,
    FedAvg,
    Median,
    Strategy,
    TrimmedMean,
    bound_norm,
    make_strategy,
)
from aggregator.validation import UpdateRejectedError, ValidationLimits, validate_update
from aggregator.worker import CryptoWorker, Delivery
from pqlink import ContentType, Identity, Registry, Role, seal_envelope
from wire.fl import ModelUpdate

from .conftest import Parties

N = 12  # parameters of the toy model in these tests


def _update(
    sender: Identity,
    to: Identity,
    delta: np.ndarray,
    *,
    round_: int = 1,
    samples: int = 10,
    count: int | None = None,
    content_type: ContentType = ContentType.MODEL_UPDATE,
) -> bytes:
    payload = ModelUpdate(
        delta.astype("<f4").tobytes(),
        count if count is not None else delta.size,
        {"train_seconds": 0.01},
    ).encode()
    return seal_envelope(
        sender, [to.public], payload, content_type=content_type, round=round_, sample_count=samples
    )


def _limits() -> ValidationLimits:
    return ValidationLimits(parameter_count=N, max_update_norm=100.0, max_envelope_bytes=64 * 1024)


def test_strategies_combine() -> None:
    a = Contribution("a", 1, np.ones(3, np.float32))
    b = Contribution("b", 3, np.full(3, 5.0, np.float32))
    c = Contribution("c", 1, np.full(3, 1000.0, np.float32))
    fed = FedAvg().aggregate(4.0, np.float32(1) * a.delta + np.float32(3) * b.delta, ())
    assert np.allclose(fed, 4.0)  # (1*1 + 3*5) / 4
    assert np.allclose(Median().aggregate(0, None, [a, b, c]), 5.0)
    assert np.allclose(TrimmedMean(0.34).aggregate(0, None, [a, b, c]), 5.0)  # drops 1 and 1000
    assert np.allclose(np.linalg.norm(bound_norm(np.full(4, 10.0, np.float32), 2.0)), 2.0)
    with pytest.raises(ValueError, match="unknown strategy"):
        make_strategy("mean-ish")
    with pytest.raises(ValueError, match="trim"):
        TrimmedMean(0.6)


def test_valid_update_passes(parties: Parties) -> None:
    delta = np.arange(N, dtype=np.float32) / 10
    valid = validate_update(
        _update(parties.gateway, parties.aggregator, delta),
        parties.aggregator,
        parties.gateway_registry(),
        _limits(),
    )
    assert valid.contribution.gateway == "gw-01"
    assert valid.contribution.samples == 10
    assert np.array_equal(valid.contribution.delta, delta)


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("forged", "bad_signature"),
        ("unenrolled", "unenrolled"),
        ("wrong_shape", "wrong_shape"),
        ("nan", "non_finite"),
        ("inf", "non_finite"),
        ("huge_norm", "norm_exceeded"),
        ("oversized", "oversized"),
        ("tampered", "bad_signature"),  # the signature covers every byte: checked before decrypting
        ("truncated", "malformed"),
        ("wrong_type", "wrong_type"),
        ("zero_samples", "bad_sample_count"),
    ],
)
def test_bad_updates_are_rejected_with_a_reason(parties: Parties, case: str, reason: str) -> None:
    delta = np.ones(N, np.float32)
    gw, agg = parties.gateway, parties.aggregator
    frame = {
        "forged": lambda: _update(
            Identity(
                "gw-01",
                Role.GATEWAY,
                parties.other_gateway.signing_key,
                parties.other_gateway.kem_key,
            ),
            agg,
            delta,
        ),
        "unenrolled": lambda: _update(Identity.generate("gw-77", Role.GATEWAY), agg, delta),
        "wrong_shape": lambda: _update(gw, agg, np.ones(N + 1, np.float32)),
        "nan": lambda: _update(gw, agg, np.array([np.nan] + [0.0] * (N - 1), np.float32)),
        "inf": lambda: _update(gw, agg, np.array([np.inf] + [0.0] * (N - 1), np.float32)),
        "huge_norm": lambda: _update(gw, agg, np.full(N, 1e3, np.float32)),
        "oversized": lambda: _update(gw, agg, np.ones(N, np.float32)) + b"\0" * 70_000,
        "tampered": lambda: _flip(_update(gw, agg, delta), -4000),
        "truncated": lambda: _update(gw, agg, delta)[:-10],
        "wrong_type": lambda: _update(gw, agg, delta, content_type=ContentType.GLOBAL_MODEL),
        "zero_samples": lambda: _update(gw, agg, delta, samples=0),
    }[case]()
    with pytest.raises(UpdateRejectedError) as info:
        validate_update(frame, agg, parties.gateway_registry(), _limits())
    assert info.value.reason == reason


def _flip(frame: bytes, pos: int) -> bytes:
    b = bytearray(frame)
    b[pos] ^= 1
    return bytes(b)


def _worker(parties: Parties, individual: bool = False) -> CryptoWorker:
    return CryptoWorker(
        "w1",
        parties.aggregator,
        parties.gateway_registry(),
        _limits(),
        individual=individual,
        norm_bound=None,
    )


def test_worker_sums_fresh_and_isolates_redelivered(parties: Parties) -> None:
    worker = _worker(parties)
    d1 = _update(parties.gateway, parties.aggregator, np.ones(N, np.float32), samples=10)
    d2 = _update(parties.other_gateway, parties.aggregator, np.full(N, 3.0, np.float32), samples=30)
    bad = _update(parties.gateway, parties.aggregator, np.ones(N + 1, np.float32))
    partials = worker.process([Delivery(d1, False), Delivery(d2, False), Delivery(bad, False)])
    assert len(partials) == 1
    p = partials[0]
    assert sorted(p.contributors) == [("gw-01", 10), ("gw-02", 30)]
    assert p.weighted_sum is not None
    assert np.allclose(p.weighted_sum, 10 * 1 + 30 * 3)
    assert [r.reason for r in p.rejections] == ["wrong_shape"]
    again = worker.process([Delivery(d1, True), Delivery(d2, True)])
    assert [len(x.contributors) for x in again] == [1, 1]  # redelivered: each alone
    decoded = Partial.decode(p.encode(), N)
    assert decoded.contributors == p.contributors
    assert decoded.weighted_sum is not None
    assert p.weighted_sum is not None
    assert np.array_equal(decoded.weighted_sum, p.weighted_sum)
    with pytest.raises(PartialError):
        Partial.decode(p.encode()[:-4], N)


def test_worker_checks_on_arrival_and_folds_later(parties: Parties) -> None:
    """The run loop verifies each update as it arrives and folds the batch when it is due."""
    worker = _worker(parties)
    d1 = _update(parties.gateway, parties.aggregator, np.ones(N, np.float32), samples=10)
    forged = _flip(d1, len(d1) - 5)
    checked = [worker.check(Delivery(d, False)) for d in (d1, forged, d1)]
    assert worker.processed == 3
    assert not isinstance(checked[0].outcome, Rejection)
    assert checked[0].outcome[1].gateway == "gw-01"
    assert isinstance(checked[1].outcome, Rejection)
    assert checked[1].outcome.reason == "bad_signature"
    partials = worker.fold(checked)
    assert len(partials) == 1
    assert partials[0].contributors == (("gw-01", 10),)
    assert sorted(r.reason for r in partials[0].rejections) == ["bad_signature", "duplicate"]


def _coordinator(
    tmp_path: Path, strategy: Strategy | None = None, quorum: int = 2
) -> RoundCoordinator:
    return RoundCoordinator(
        tmp_path / "c.db",
        strategy or FedAvg(),
        RoundPolicy(quorum, 30.0),
        np.zeros(N, np.float32),
    )


def _partial(round_: int, *contribs: tuple[str, int, float], individual: bool = False) -> Partial:
    cs = [Contribution(g, n, np.full(N, v, np.float32)) for g, n, v in contribs]
    return make_partial("w", round_, cs, individual)


def test_round_counts_each_gateway_once_and_closes_at_quorum(tmp_path: Path) -> None:
    with _coordinator(tmp_path) as coord:
        assert coord.round == 1
        out = coord.accept(_partial(1, ("gw-01", 10, 1.0)))
        assert out.accepted == ("gw-01",)
        dup = coord.accept(_partial(1, ("gw-01", 10, 1.0)))  # a redelivered update
        assert dup.duplicates == ("gw-01",)
        assert coord.should_close() is None
        coord.accept(_partial(1, ("gw-02", 30, 3.0)))
        assert coord.should_close() == CloseReason.QUORUM
        closed = coord.close_round(CloseReason.QUORUM)
        assert closed.participants == ["gw-01", "gw-02"]
        assert np.allclose(coord.weights, (10 * 1 + 30 * 3) / 40)
        assert (coord.round, coord.version) == (2, 1)
        # a late update for round 1 is stale
        stale = coord.accept(_partial(1, ("gw-03", 5, 100.0)))
        assert stale.rejected == (("gw-03", "stale"),)
        assert np.allclose(coord.weights, 2.5)


def test_state_survives_a_restart(tmp_path: Path) -> None:
    with _coordinator(tmp_path) as coord:
        coord.accept(_partial(1, ("gw-01", 10, 1.0)))
    with _coordinator(tmp_path) as again:
        assert again.counted() == {"gw-01": 10}
        again.accept(_partial(1, ("gw-01", 10, 1.0)))  # redelivery after the restart
        again.accept(_partial(1, ("gw-02", 10, 3.0)))
        again.close_round(CloseReason.QUORUM)
        assert np.allclose(again.weights, 2.0)
    with _coordinator(tmp_path) as third:
        assert (third.round, third.version) == (2, 1)
        assert np.allclose(third.weights, 2.0)


def test_partials_in_one_batch_count_each_gateway_once(tmp_path: Path) -> None:
    with _coordinator(tmp_path) as coord:
        with coord.batch():
            first = coord.accept(_partial(1, ("gw-01", 10, 1.0)))
            again = coord.accept(_partial(1, ("gw-01", 10, 1.0)))  # redelivered, same batch
            second = coord.accept(_partial(1, ("gw-02", 30, 3.0)))
            assert coord.counted() == {"gw-01": 10, "gw-02": 30}  # seen before the commit
        assert (first.accepted, again.duplicates, second.accepted) == (
            ("gw-01",),
            ("gw-01",),
            ("gw-02",),
        )
    with _coordinator(tmp_path) as after_restart:
        assert after_restart.counted() == {"gw-01": 10, "gw-02": 30}
        after_restart.close_round(CloseReason.QUORUM)
        assert np.allclose(after_restart.weights, (10 * 1 + 30 * 3) / 40)


def test_a_failed_batch_leaves_nothing_counted(tmp_path: Path) -> None:
    class CrashedError(Exception):
        """The coordinator dying between a batch's partials."""

    def accept_then_fail(coord: RoundCoordinator) -> None:
        with coord.batch():
            coord.accept(_partial(1, ("gw-02", 30, 3.0)))
            raise CrashedError

    with _coordinator(tmp_path) as coord:
        coord.accept(_partial(1, ("gw-01", 10, 1.0)))
        with pytest.raises(CrashedError):
            accept_then_fail(coord)
        # the batch's partials are redelivered (never acknowledged) and count then
        assert coord.counted() == {"gw-01": 10}
        assert coord.accept(_partial(1, ("gw-02", 30, 3.0))).accepted == ("gw-02",)
        coord.close_round(CloseReason.QUORUM)
        assert np.allclose(coord.weights, (10 * 1 + 30 * 3) / 40)


def test_deadline_with_too_few_keeps_the_model(tmp_path: Path) -> None:
    with RoundCoordinator(
        tmp_path / "c.db",
        FedAvg(),
        RoundPolicy(3, 10.0, min_participants=2),
        np.zeros(N, np.float32),
    ) as coord:
        coord.accept(_partial(1, ("gw-01", 10, 1.0)))
        assert coord.should_close(now=coord.deadline + 1) == CloseReason.DEADLINE
        closed = coord.close_round(CloseReason.DEADLINE)
        assert closed.version == 0
        assert np.allclose(coord.weights, 0.0)
        assert coord.round == 2


def test_robust_rule_ignores_an_outlier(tmp_path: Path) -> None:
    with _coordinator(tmp_path, Median(), quorum=3) as coord:
        coord.accept(_partial(1, ("gw-01", 10, 1.0), ("gw-02", 10, 1.2), individual=True))
        coord.accept(_partial(1, ("gw-03", 10, 1e3), individual=True))
        coord.close_round(CloseReason.QUORUM)
        assert np.allclose(coord.weights, 1.2)


def test_quorum_for() -> None:
    assert quorum_for(10, 0.5, 1) == 5
    assert quorum_for(3, 1.0, 1) == 3
    assert quorum_for(0, 1.0, 1) == 1
    assert quorum_for(4, 0.1, 2) == 2


def test_multi_recipient_registry(parties: Parties) -> None:
    reg = Registry()
    reg.enroll(parties.gateway.public)
    assert reg.active(Role.GATEWAY) == [parties.gateway.public]


def test_example_aggregator_config_shows_the_defaults() -> None:
    example = Path(__file__).resolve().parents[1] / "configs" / "aggregator.toml"
    parsed = load_config(example)
    minimal = parse_config(
        {"aggregator": {"id": "aggregator", "state_dir": "/var/lib/iomt-aggregator"}},
        example.parent.resolve(),
    )
    # ...except that the example turns secure aggregation and DP on (the defaults keep them
    # off, so that a configuration without them runs as before)
    assert parsed.training == dataclasses.replace(
        minimal.training,
        clip_norm=2.0,
        noise_multiplier=0.5,
        secure_aggregation=True,
        precision_bits=16,
    )
    assert dataclasses.replace(parsed, training=minimal.training) == minimal


def test_broadcast_epoch_rounds_is_at_least_one() -> None:
    base = {"aggregator": {"id": "aggregator", "state_dir": "/var/lib/iomt-aggregator"}}
    assert parse_config(base, Path("/")).rounds.broadcast_epoch_rounds == 20
    one = parse_config({**base, "rounds": {"broadcast_epoch_rounds": 1}}, Path("/"))
    assert one.rounds.broadcast_epoch_rounds == 1
    with pytest.raises(ConfigError, match=r"rounds\.broadcast_epoch_rounds"):
        parse_config({**base, "rounds": {"broadcast_epoch_rounds": 0}}, Path("/"))
    with pytest.raises(ConfigError, match=r"rounds\.broadcast_epoch_rounds"):
        parse_config({**base, "rounds": {"broadcast_epoch_rounds": 1.5}}, Path("/"))


def test_key_epochs_start_rotate_and_follow_the_recipients(parties: Parties) -> None:
    both = [parties.gateway.public, parties.other_gateway.public]
    epochs = KeyEpochs(rotate_after=2)

    def due() -> bool:  # read each time (mypy would narrow the property after one assert)
        return epochs.entries_due

    first, reason = epochs.for_broadcast(both)
    assert (reason, due()) == (EpochReason.START, True)
    epochs.published(with_entries=True)
    assert epochs.for_broadcast(list(reversed(both))) == (first, None)  # a set, not a list
    assert not due()
    epochs.published(with_entries=False)
    rotated, reason = epochs.for_broadcast(both)  # after exactly rotate_after broadcasts
    assert reason is EpochReason.ROTATION
    assert rotated.epoch_id != first.epoch_id
    assert due()
    # a commit that failed counts nothing: the entries are still due
    assert epochs.for_broadcast(both) == (rotated, None)
    assert due()
    epochs.published(with_entries=True)
    fewer, reason = epochs.for_broadcast(both[:1])
    assert reason is EpochReason.RECIPIENTS_CHANGED
    assert fewer.fingerprints == {parties.gateway.public.fingerprint}
    epochs.published(with_entries=True)
    epochs.republish()  # a new broker connection: the entries go again
    assert epochs.for_broadcast(both[:1]) == (fewer, None)
    assert due()
    with pytest.raises(ValueError, match="at least one broadcast, not 0"):
        KeyEpochs(0)


def test_round_history_is_bounded_by_keep_rounds(tmp_path: Path) -> None:
    keep = 5
    coord = RoundCoordinator(
        tmp_path / "c.db",
        FedAvg(),
        RoundPolicy(1, 30.0),
        np.zeros(N, np.float32),
        keep_rounds=keep,
    )
    for r in range(1, 41):
        coord.accept(_partial(r, ("gw-01", 10, 0.01)))
        coord.close_round(CloseReason.QUORUM)
    db = sqlite3.connect(tmp_path / "c.db")
    closed = [row[0] for row in db.execute("SELECT round FROM rounds WHERE closed IS NOT NULL")]
    models = [row[0] for row in db.execute("SELECT version FROM models ORDER BY 1")]
    contributions = db.execute("SELECT count(*) FROM contributions").fetchone()[0]
    db.close()
    assert closed == list(range(36, 41))  # exactly `keep` closed rounds
    assert models == list(range(36, 41))
    assert contributions == keep
    coord.close()
    again = RoundCoordinator(
        tmp_path / "c.db", FedAvg(), RoundPolicy(1, 30.0), np.zeros(N, np.float32)
    )
    assert (again.round, again.version) == (41, 40)  # the newest model survives pruning
    assert np.allclose(again.weights, 0.4)
    again.close()
