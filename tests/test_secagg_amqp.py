"""Secure aggregation through a real RabbitMQ: gateways as processes (SIGKILLed after key
sharing in some tests), a crypto worker summing masked inputs, the coordinator's stage runner;
exact sums, dropouts recovered, aborts that reveal nothing, and hostile messages refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pika
import pytest

from aggregator.adverts_ahead import AdvertsAhead
from aggregator.masked import CheckedMasked, MaskedFolder
from aggregator.secure_round import (
    SecureRound,
    SecureRoundReport,
    SecureRoundRunner,
    StageDeadlines,
    declare_secagg_topology,
    plan_round,
)
from aggregator.secure_rounds import mean_update
from aggregator.validation import ValidationLimits
from aggregator.worker import CryptoWorker, declare_topology, run_worker
from pqlink import (
    ContentType,
    Identity,
    Registry,
    Role,
    save_identity,
    save_public_identity,
    save_registry,
    seal_envelope,
)
from pqlink.secagg import AggregateResult, MaskedVector, RoundAborted, SecAggClient
from wire.amqp import SECAGG_UP_QUEUE, UPDATES_QUEUE
from wire.feature_scaling import pooled_of, pooled_scaling
from wire.fl import RoundSettings
from wire.reasons import Reason
from wire.secagg import SecAggFrame, SecAggKind, SecureRoundAnnouncement
from wire.weighting import NORM_FACTOR

from .harness import wait_until

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = RoundSettings(clip_norm=1.0, secure_aggregation=True, precision_bits=16)
#: chi-square critical value, 15 degrees of freedom, p = 0.001
CHI2_15_P001 = 37.697


class SpyFolder(MaskedFolder):
    """A crypto worker that also keeps every masked vector it opened: all a worker sees."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.seen: dict[str, MaskedVector] = {}

    def check(self, frame: bytes) -> CheckedMasked:
        checked = super().check(frame)
        if isinstance(checked.outcome, tuple):
            who, masked = checked.outcome
            self.seen[who] = masked
        return checked


@dataclass
class Bed:
    root: Path
    url: str
    aggregator: Identity
    gateways: list[Identity]
    registry: Registry
    folder: SpyFolder
    stop: threading.Event = field(default_factory=threading.Event)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    # the coordinator's keeping of adverts sent ahead, across the rounds of one test
    ahead: AdvertsAhead = field(default_factory=AdvertsAhead)

    def spawn(
        self,
        gw: Identity,
        round_: int,
        *,
        seed: int,
        die_after: str | None = None,
        samples: int = 100,
        windows: Path | None = None,
        rounds: int = 1,
    ) -> Path:
        out = self.root / f"r{round_}-{gw.name}"
        out.mkdir()
        args = [
            sys.executable,
            "-m",
            "tests.secagg_participant",
            "--url",
            self.url,
            "--identity",
            str(self.root / f"{gw.name}.key"),
            "--aggregator",
            str(self.root / "aggregator.pub"),
            "--peers",
            str(self.root / "registry.json"),
            "--out",
            str(out),
            "--seed",
            str(seed),
            "--after-round",
            str(round_ - 1),
            "--samples",
            str(samples),
            "--rounds",
            str(rounds),
        ]
        if die_after:
            args += ["--die-after", die_after]
        if windows is not None:
            args += ["--windows", str(windows)]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        with (out / "log").open("wb") as log:
            self.procs.append(subprocess.Popen(args, stdout=log, stderr=log, env=env, cwd=ROOT))
        return out

    def run_round(
        self,
        round_: int,
        members: list[Identity],
        *,
        die: dict[str, str] | None = None,
        deadlines: StageDeadlines | None = None,
        before: list[tuple[str, bytes]] | None = None,
        announcement: SecureRoundAnnouncement | None = None,
        samples: dict[str, int] | None = None,
        weight_cap: int = 0,
        windows: dict[str, Path] | None = None,
        settings: RoundSettings = SETTINGS,
    ) -> tuple[SecureRoundReport, dict[str, Path]]:
        die = die or {}
        samples = samples or {}
        if announcement is None:
            announcement = plan_round(
                round_, [g.name for g in members], settings, 256, weight_cap=weight_cap
            )
        conn = pika.BlockingConnection(pika.URLParameters(self.url))
        try:
            ch = conn.channel()
            ch.confirm_delivery()
            declare_topology(ch)
            declare_secagg_topology(ch, [g.name for g in self.gateways])
            for queue, body in before or []:
                ch.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2))
            outs = {
                g.name: self.spawn(
                    g,
                    round_,
                    seed=1000 * round_ + i,
                    die_after=die.get(g.name),
                    samples=samples.get(g.name, 100),
                    windows=(windows or {}).get(g.name),
                )
                for i, g in enumerate(members)
            }
            self.ready(outs)
        finally:
            conn.close()
        report = self.coordinate(announcement, deadlines)
        for p in self.procs:
            p.wait(60)
        return report, outs

    def coordinate(
        self, announcement: SecureRoundAnnouncement, deadlines: StageDeadlines | None = None
    ) -> SecureRoundReport:
        """One round on the coordinator's side, with the adverts kept ahead across rounds."""
        conn = pika.BlockingConnection(pika.URLParameters(self.url))
        try:
            secure = SecureRound(announcement, self.aggregator, self.registry, ahead=self.ahead)
            return SecureRoundRunner(
                conn.channel(),
                secure,
                deadlines or StageDeadlines(adverts=30.0, key_shares=20.0, inputs=5.0, unmask=20.0),
            ).run()
        finally:
            conn.close()

    def declare(self) -> None:
        """The coordinator's queues and every gateway's secure-round queues, declared."""
        conn = pika.BlockingConnection(pika.URLParameters(self.url))
        try:
            ch = conn.channel()
            declare_topology(ch)
            declare_secagg_topology(ch, [g.name for g in self.gateways])
        finally:
            conn.close()

    def ready(self, outs: dict[str, Path]) -> None:
        # process start-up on a loaded machine is not what the stage deadlines are about
        wait_until(
            lambda: all((o / "ready").exists() for o in outs.values()),
            180,
            "the gateways to be ready",
        )


@pytest.fixture
def bed(tmp_path: Path, vhost: str) -> Iterator[Bed]:
    aggregator = Identity.generate("aggregator", Role.AGGREGATOR)
    gateways = [Identity.generate(f"gw{i:02d}", Role.GATEWAY) for i in range(10)]
    registry = Registry()
    for gw in gateways:
        registry.enroll(gw.public)
        save_identity(gw, tmp_path / f"{gw.name}.key")
    # the registry of gateway identities each gateway is given at enrolment
    save_registry(registry, tmp_path / "registry.json")
    save_public_identity(aggregator.public, tmp_path / "aggregator.pub")
    folder = SpyFolder("w1", aggregator, registry)
    worker = CryptoWorker(
        "w1", aggregator, registry, ValidationLimits(256), individual=False, norm_bound=None
    )
    b = Bed(tmp_path, vhost, aggregator, gateways, registry, folder)
    thread = threading.Thread(
        target=run_worker,
        args=(worker, vhost),
        kwargs={
            "prefetch": 64,
            "batch_max": 64,
            "batch_wait": 0.01,
            "stop": b.stop,
            "masked": folder,
        },
    )
    thread.start()
    try:
        yield b
    finally:
        b.stop.set()
        thread.join(30)
        for p in b.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _result(out: Path) -> dict[str, object]:
    return dict(json.loads((out / "result.json").read_text()))


def _ring_sum(vectors: list[np.ndarray], bits: int) -> np.ndarray:
    total = np.zeros_like(vectors[0], dtype=np.uint64)
    for v in vectors:
        total += v.astype(np.uint64)
    return total & np.uint64((1 << bits) - 1)


def _chi2_top_bits(values: np.ndarray, bits: int) -> float:
    buckets = np.bincount((values >> np.uint64(bits - 4)).astype(np.int64), minlength=16)
    expected = values.size / 16
    return float(np.sum((buckets - expected) ** 2 / expected))


@pytest.mark.parametrize("n", [3, 10])
def test_secure_sum_equals_the_plain_sum_exactly(bed: Bed, n: int) -> None:
    report, outs = bed.run_round(1, bed.gateways[:n])
    result = report.outcome
    assert isinstance(result, AggregateResult), result
    bits = report.announcement.modulus_bits
    encoded = [np.load(outs[g.name] / "encoded.npy") for g in bed.gateways[:n]]
    assert np.array_equal(result.total, _ring_sum(encoded, bits))
    assert result.dropped == ()
    assert report.rejections == []
    assert all(_result(o)["finished"] for o in outs.values())


def test_secure_weighted_mean_equals_the_plain_weighted_mean(bed: Bed) -> None:
    """Three gateways with 40, 300 and 2500 samples, counts capped at 1000: the coordinator's
    weighted mean is the plain weighted mean of the same quantised inputs, exactly in
    integers, and FedAvg's (capped) weighted mean up to quantisation."""
    members = bed.gateways[:3]
    counts = {members[0].name: 40, members[1].name: 300, members[2].name: 2500}
    cap = 1000
    report, outs = bed.run_round(1, members, samples=counts, weight_cap=cap)
    result = report.outcome
    assert isinstance(result, AggregateResult), result
    a = report.announcement
    assert a.encoded_dimension == 257  # the weight travels as one more masked coordinate
    enc = a.round_config().encoding
    encoded = [np.load(outs[g.name] / "encoded.npy") for g in members]
    plain = np.sum([enc.signed_sum(e) for e in encoded], axis=0)
    assert np.array_equal(result.signed_sum(), plain)  # exact, in integers
    weighting = a.weighting
    assert weighting is not None
    secure_mean = mean_update(report)
    assert secure_mean is not None
    plain_mean = weighting.mean(plain, a.clip, 3, a.precision_bits).astype(np.float32)
    assert np.array_equal(secure_mean, plain_mean)
    # FedAvg over the clipped updates, with n capped at 1000
    updates = [np.load(outs[g.name] / "update.npy") for g in members]
    clipped = [u * min(1.0, a.clip / float(np.linalg.norm(u))) for u in updates]
    weights = [min(counts[g.name], cap) for g in members]
    fedavg = np.sum([w * u for w, u in zip(weights, clipped, strict=True)], axis=0) / sum(weights)
    step = NORM_FACTOR * a.clip / ((1 << a.precision_bits) - 1)  # one quantisation unit
    assert np.max(np.abs(secure_mean - fedavg)) < 4 * step
    # and it is not the unweighted mean (the test can fail)
    assert np.max(np.abs(secure_mean - np.mean(clipped, axis=0))) > 100 * step


def test_a_secure_statistics_round_reveals_only_the_pooled_moments(bed: Bed) -> None:
    """Three gateways' windows (40, 300 and 900 of them, below the weight cap) answer a
    statistics round through the secure sum: the coordinator's pooled mean/std equals that of
    all the windows within the stated quantisation, and a worker saw only masked vectors."""
    members = bed.gateways[:3]
    d, bound = 6, 10.0
    rng = np.random.default_rng(11)
    data = {
        members[0].name: rng.normal(0.0, 1.0, (40, d)),
        members[1].name: rng.normal(2.0, 3.0, (300, d)),
        members[2].name: rng.normal(-1.0, 0.5, (900, d)),
    }
    paths = {}
    for name, x in data.items():
        paths[name] = bed.root / f"{name}-windows.npy"
        np.save(paths[name], x)
    settings = RoundSettings(
        clip_norm=1.0,
        secure_aggregation=True,
        precision_bits=16,
        feature_stats=d,
        feature_bound=bound,
    )
    report, outs = bed.run_round(
        1, members, samples={}, weight_cap=1000, windows=paths, settings=settings
    )
    assert isinstance(report.outcome, AggregateResult), report.outcome
    a = report.announcement
    mean = mean_update(report)
    assert mean is not None
    got = pooled_scaling(mean, d, bound, a.clip)
    want = pooled_of(list(data.values()), bound)
    # a quantisation unit of the weighted mean (as FedAvg's, above), times the moment
    # vector's scale back to feature units: B sqrt(2d) / clip for a mean, B^2 for a square
    step = NORM_FACTOR * a.clip / ((1 << a.precision_bits) - 1)
    scale = np.sqrt(2 * d) / a.clip
    assert np.max(np.abs(np.subtract(got.mean, want.mean))) < 4 * step * bound * scale
    got_sq = np.square(got.std) + np.square(got.mean)
    want_sq = np.square(want.std) + np.square(want.mean)
    assert np.max(np.abs(got_sq - want_sq)) < 4 * step * bound**2 * scale
    # not the unweighted mean of the wards' moments (the test can fail)
    unweighted = pooled_scaling(
        np.mean([np.load(o / "update.npy") for o in outs.values()], axis=0), d, bound, a.clip
    )
    assert np.max(np.abs(np.subtract(unweighted.mean, want.mean))) > 0.5
    # a worker held each gateway's moments only masked: uniform, unlike the encoded input
    bits = a.modulus_bits
    for g in members:
        encoded = np.load(outs[g.name] / "encoded.npy")
        assert _chi2_top_bits(encoded, bits) > CHI2_15_P001
        assert _chi2_top_bits(bed.folder.seen[g.name].vector, bits) < CHI2_15_P001


def test_dropouts_after_key_sharing_are_recovered(bed: Bed) -> None:
    members = bed.gateways[:6]  # k = 5, t = 3, min_survivors = 4: two may drop
    dead = {members[1].name: "SHARE_KEYS", members[4].name: "SHARE_KEYS"}
    report, outs = bed.run_round(1, members, die=dead)
    result = report.outcome
    assert isinstance(result, AggregateResult), result
    assert report.dropouts_recovered == 2
    a = report.announcement
    assert set(result.dropped) == {a.participants[name] for name in dead}
    survivors = [g.name for g in members if g.name not in dead]
    encoded = [np.load(outs[name] / "encoded.npy") for name in survivors]
    assert np.array_equal(result.total, _ring_sum(encoded, a.modulus_bits))
    for name in dead:
        assert not (outs[name] / "result.json").exists()  # it really died


def test_too_few_survivors_abort_and_the_next_round_proceeds(bed: Bed) -> None:
    members = bed.gateways[:5]  # k = 4, t = 3, min_survivors = 4: one may drop, not two
    dead = {members[0].name: "SHARE_KEYS", members[3].name: "SHARE_KEYS"}
    report, outs = bed.run_round(1, members, die=dead)
    assert isinstance(report.outcome, RoundAborted)
    assert (report.outcome.stage, report.outcome.reason) == ("inputs", "too_few_survivors")
    for g in members:
        if g.name in dead:
            continue
        r = _result(outs[g.name])
        assert r["aborted"] is True
        assert r["sent"] == ["ADVERT", "SHARE_KEYS", "MASKED_INPUT"]
    report2, outs2 = bed.run_round(2, members)
    assert isinstance(report2.outcome, AggregateResult)
    encoded = [np.load(outs2[g.name] / "encoded.npy") for g in members]
    assert np.array_equal(
        report2.outcome.total, _ring_sum(encoded, report2.announcement.modulus_bits)
    )


def test_a_crypto_worker_sees_only_uniform_masked_vectors(bed: Bed) -> None:
    members = bed.gateways[:3]
    report, outs = bed.run_round(1, members)
    assert isinstance(report.outcome, AggregateResult)
    bits = report.announcement.modulus_bits
    name = members[0].name
    masked = bed.folder.seen[name].vector
    encoded = np.load(outs[name] / "encoded.npy")
    # the unmasked input is far from uniform (the test can fail)...
    assert _chi2_top_bits(encoded, bits) > CHI2_15_P001
    # ...its masked form, all a worker (or a spy on the queue, which sees less) gets, is not
    assert _chi2_top_bits(masked, bits) < CHI2_15_P001


def test_hostile_messages_are_refused_and_the_round_completes(bed: Bed) -> None:
    members = bed.gateways[:3]
    a = plan_round(1, [g.name for g in members], SETTINGS, 256)
    gw0, gw1, gw2 = members
    config, id2 = a.round_config(), a.participants[gw2.name]
    impostor = Identity.generate("impostor", Role.GATEWAY).signing_key
    forged = SecAggClient(config, id2, impostor, {}).advertise()  # not signed by gw2
    claims_other = SecAggClient(config, id2, gw0.signing_key, {}).advertise()

    def up(sender: Identity, kind: SecAggKind, body: bytes, round_: int = 1) -> bytes:
        frame = SecAggFrame(kind, round_, body).encode()
        return seal_envelope(
            sender, [bed.aggregator.public], frame, content_type=ContentType.SECAGG, round=round_
        )

    stale = SecAggFrame(SecAggKind.ADVERT, 0, b"\x00" * 40).encode()
    junk = [
        (SECAGG_UP_QUEUE, up(gw2, SecAggKind.ADVERT, forged)),
        (SECAGG_UP_QUEUE, up(gw0, SecAggKind.ADVERT, claims_other)),
        (SECAGG_UP_QUEUE, up(gw1, SecAggKind.UNMASK_RESPONSE, b"\x00")),
        (SECAGG_UP_QUEUE, b"not an envelope"),
        (
            SECAGG_UP_QUEUE,
            seal_envelope(
                gw0, [bed.aggregator.public], stale, content_type=ContentType.SECAGG, round=0
            ),
        ),
        (
            UPDATES_QUEUE,
            seal_envelope(
                gw1,
                [bed.aggregator.public],
                SecAggFrame(SecAggKind.MASKED_INPUT, 1, b"\x01\x02").encode(),
                content_type=ContentType.MASKED_INPUT,
                round=1,
                sample_count=1,
            ),
        ),
    ]
    report, outs = bed.run_round(1, members, before=junk, announcement=a)
    assert isinstance(report.outcome, AggregateResult), report.outcome
    got = sorted((who, str(reason)) for who, reason, _ in report.rejections)
    assert got == sorted(
        [
            (gw2.name, Reason.FORGED),
            (gw0.name, Reason.UNEXPECTED_SENDER),
            (gw1.name, Reason.WRONG_STAGE),
            ("-", Reason.MALFORMED),
            (gw0.name, Reason.WRONG_ROUND),
            (gw1.name, Reason.MALFORMED),
        ]
    )
    encoded = [np.load(outs[g.name] / "encoded.npy") for g in members]
    assert np.array_equal(
        report.outcome.total, _ring_sum(encoded, report.announcement.modulus_bits)
    )


def test_announcement_round_trips_and_refuses_bad_fields() -> None:
    a = plan_round(3, ["b", "a", "c"], SETTINGS, 32)
    assert SecureRoundAnnouncement.decode(a.encode()) == a
    assert a.participants == {"a": 1, "b": 2, "c": 3}


def _two_rounds(
    bed: Bed, first: list[Identity], second: list[Identity]
) -> tuple[list[SecureRoundReport], dict[str, Path]]:
    """Gateways in `first` stay for two rounds on one link each; those only in `second` come
    up for round 2 (they missed round 1). Both rounds through the same coordinator side."""
    bed.declare()
    outs = {g.name: bed.spawn(g, 1, seed=i, rounds=2) for i, g in enumerate(first)}
    bed.ready(outs)
    reports = [bed.coordinate(plan_round(1, [g.name for g in first], SETTINGS, 256))]
    late = {g.name: bed.spawn(g, 2, seed=50 + i) for i, g in enumerate(second) if g not in first}
    bed.ready(late)
    reports.append(bed.coordinate(plan_round(2, [g.name for g in second], SETTINGS, 256)))
    for p in bed.procs:
        p.wait(60)
    return reports, {**outs, **late}


def _exact(report: SecureRoundReport, outs: list[Path]) -> None:
    result = report.outcome
    assert isinstance(result, AggregateResult), result
    r = report.announcement.round
    encoded = [np.load(o / f"encoded-{r}.npy") for o in outs]
    assert np.array_equal(result.total, _ring_sum(encoded, report.announcement.modulus_bits))
    assert result.dropped == ()
    assert report.rejections == []


def test_a_steady_state_round_opens_with_the_adverts_sent_ahead(bed: Bed) -> None:
    members = bed.gateways[:4]
    (first, second), outs = _two_rounds(bed, members, members)
    _exact(first, list(outs.values()))
    _exact(second, list(outs.values()))
    # round 1: the full setup, four exchanges; round 2: announcement and adverts together
    assert (first.pipelined, first.exchanges) == (False, 4)
    assert (second.pipelined, second.exchanges) == (True, 3)
    for out in outs.values():
        r1 = json.loads((out / "result-1.json").read_text())
        r2 = json.loads((out / "result-2.json").read_text())
        # each answer to an unmasking request is followed by the next round's advert
        assert r1["sent"] == ["ADVERT", "SHARE_KEYS", "MASKED_INPUT", "UNMASK_RESPONSE", "ADVERT"]
        assert r2["sent"] == ["SHARE_KEYS", "MASKED_INPUT", "UNMASK_RESPONSE", "ADVERT"]
        assert r1["refused"] == r2["refused"] == []


def test_a_gateway_that_missed_a_round_joins_the_next_by_the_full_setup(bed: Bed) -> None:
    first, everyone = bed.gateways[:4], bed.gateways[:5]
    (r1, r2), outs = _two_rounds(bed, first, everyone)
    _exact(r1, [outs[g.name] for g in first])
    # one participant sent nothing ahead: everyone advertises fresh keys in the full setup
    assert (r2.pipelined, r2.exchanges) == (False, 4)
    _exact(r2, [outs[g.name] for g in everyone])
    assert isinstance(r2.outcome, AggregateResult)
    assert len(r2.outcome.survivors) == 5
    for g in first:
        r = json.loads((outs[g.name] / "result-2.json").read_text())
        assert r["sent"] == ["ADVERT", "SHARE_KEYS", "MASKED_INPUT", "UNMASK_RESPONSE", "ADVERT"]


def test_a_gateway_restarted_between_rounds_sits_out_the_pipelined_one(bed: Bed) -> None:
    members = bed.gateways[:4]
    bed.declare()
    # gw03 takes part in round 1 and sends its advert for round 2, then its process ends
    outs = {
        g.name: bed.spawn(g, 1, seed=i, rounds=1 if i == 3 else 2) for i, g in enumerate(members)
    }
    bed.ready(outs)
    first = bed.coordinate(plan_round(1, [g.name for g in members], SETTINGS, 256))
    _exact(first, [outs[g.name] for g in members])
    bed.procs[3].wait(60)
    # a new process for gw03, without the keys its advert for round 2 was made with
    restarted = bed.spawn(members[3], 2, seed=3)
    bed.ready({members[3].name: restarted})
    quick = StageDeadlines(adverts=5.0, key_shares=5.0, inputs=5.0, unmask=20.0)
    second = bed.coordinate(plan_round(2, [g.name for g in members], SETTINGS, 256), quick)
    for p in bed.procs:
        p.wait(60)
    assert second.pipelined
    result = second.outcome
    assert isinstance(result, AggregateResult), result
    survivors = [outs[g.name] for g in members[:3]]
    encoded = [np.load(o / "encoded-2.npy") for o in survivors]
    assert np.array_equal(result.total, _ring_sum(encoded, second.announcement.modulus_bits))
    assert len(result.survivors) == 3
    r = json.loads((restarted / "result.json").read_text())
    assert r["sent"] == []
    assert r["refused"] == ["announcement: no keys made ahead for round 2"]
