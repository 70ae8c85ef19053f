"""Recorded patients replayed as RR-interval wearables: annotation rules, and a WFDB record
written here (normal, AF, a run of PVCs) replayed through mosquitto into a real gateway daemon
beside an old-kind vitals wearable, stored exactly once across a SIGKILL, and windowed into
the expected labels; malformed RR records rejected with their reason."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import struct
import subprocess
import sys
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pytest
import wfdb

from bench.fleet import establish
from device_emulators.replay import batches, beats_from_annotations, list_records, read_beats
from gateway.rhythm import EXCLUDED, RhythmClass
from gateway.store import VitalsStore
from gateway.tasks import TASKS
from pqlink import load_identity, load_public_identity, save_public_identity
from testbed import free_port
from testbed.mosquitto import Mosquitto
from wire.rr import RR_HEADER_SIZE, RR_KIND, BeatClass, Rhythm
from wire.topics import TopicKind, TopicLayout

from .conftest import Parties
from .harness import (
    ROOT,
    DaemonProcess,
    EmulatorProcess,
    GatewaySetup,
    _env,
    enroll,
    make_gateway,
    stored_count,
    wait_until,
)

FS = 360


def _sample(ms: float) -> int:
    return round(ms * FS / 1000)


def write_record(directory: Path, name: str = "900") -> list[tuple[int, int, int]]:
    """A 5-minute record: 129 normal beats, 128 in AF, 128 normal with a run of 8 PVCs at
    stored beats 300-307; returns the expected stored beats (rr_ms, rhythm, beat class)."""
    rng = np.random.default_rng(5)
    samples: list[int] = []
    symbols: list[str] = []
    aux: list[str] = []
    expected: list[tuple[int, int, int]] = []
    t = 500.0

    def rhythm(label: str) -> None:
        # just after the last beat: the change applies from the next beat on
        samples.append(_sample(t) + 1)
        symbols.append("+")
        aux.append(label)

    def beat(rr: float, symbol: str, code: Rhythm, cls: BeatClass, first: bool = False) -> None:
        nonlocal t
        t += rr
        samples.append(_sample(t))
        symbols.append(symbol)
        aux.append("")
        if not first:
            expected.append((-1, int(code), int(cls)))  # rr filled in below from the samples

    rhythm("(N")
    beat(300, "N", Rhythm.NORMAL, BeatClass.NORMAL, first=True)
    for _ in range(128):
        beat(float(800 + rng.integers(-25, 25)), "N", Rhythm.NORMAL, BeatClass.NORMAL)
    rhythm("(AFIB")
    # an artifact: not a beat
    samples.append(_sample(t + 100))
    symbols.append("|")
    aux.append("")
    for _ in range(128):
        t_before = t
        beat(float(rng.uniform(380, 1100)), "N", Rhythm.AFIB, BeatClass.NORMAL)
        assert t > t_before
    rhythm("(N")
    for i in range(128):
        stored_index = 256 + i
        if 300 <= stored_index < 308:
            beat(450, "V", Rhythm.NORMAL, BeatClass.VENTRICULAR)
        elif stored_index == 308:
            beat(1250, "N", Rhythm.NORMAL, BeatClass.NORMAL)
        else:
            beat(float(800 + rng.integers(-25, 25)), "N", Rhythm.NORMAL, BeatClass.NORMAL)
    wfdb.wrann(
        name,
        "atr",
        np.array(samples),
        symbol=symbols,
        aux_note=aux,
        fs=FS,
        write_dir=str(directory),
    )
    (directory / f"{name}.hea").write_text(f"{name} 0 {FS} {samples[-1] + FS}\n")
    beat_samples = [s for s, sym in zip(samples, symbols, strict=True) if sym in "NV"]
    rrs = [round(1000 * (b - a) / FS) for a, b in itertools.pairwise(beat_samples)]
    return [(rr, r, c) for rr, (_, r, c) in zip(rrs, expected, strict=True)]


EXPECTED_LABELS = [0, 0, 0, 1, 1, 1, 2, 2, 0]  # windows at 96 and 224 straddle two rhythms


def test_annotations_to_beats() -> None:
    # rhythm notes, an artifact, a readable noise change, then an unreadable stretch
    rows = [
        (0, "+", "(N\x00", 0),
        (360, "N", "", 0),
        (648, "N", "", 0),
        (700, "|", "", 0),
        (720, "~", "", 2),  # signal 1 noisy but readable: beats and intervals kept
        (936, "V", "", 0),
        (1000, "+", "(VT", 0),
        (1100, "~", "", -1),  # both unreadable
        (1224, "N", "", 0),
        (1400, "~", "", 0),
        (1512, "N", "", 0),  # first beat after the gap: only an anchor
        (1800, "A", "", 0),
        (1900, "+", "(XYZ", 0),
        (2088, "x", "", 0),  # a non-conducted P wave is no beat
        (2100, "Q", "", 0),
    ]
    samples, symbols, notes, subtypes = (list(column) for column in zip(*rows, strict=True))
    beats = beats_from_annotations(samples, symbols, notes, subtypes, fs=360.0)
    got = [(round(b.time_ms), b.rr_ms, b.rhythm, b.beat_class) for b in beats]
    assert got == [
        (1800, 800, Rhythm.NORMAL, BeatClass.NORMAL),
        (2600, 800, Rhythm.NORMAL, BeatClass.VENTRICULAR),
        (5000, 800, Rhythm.VT, BeatClass.SUPRAVENTRICULAR),
        (5833, 833, Rhythm.UNKNOWN, BeatClass.UNCLASSIFIED),
    ]


def test_interval_bounds_when_replaying() -> None:
    # 199 ms and 3001 ms are not intervals a wearable reports; 200 and 3000 are
    samples = [0, 72, 1152, 1224, 2304]  # 200, 3000 ms; then 200 ms; then 3000 ms
    beats = beats_from_annotations(samples, ["N"] * 5, [""] * 5, [0] * 5, fs=360.0)
    assert [b.rr_ms for b in beats] == [200, 3000, 200, 3000]
    # one sample more on each side: 3003 ms and 197 ms
    beats = beats_from_annotations([0, 1081, 1152], ["N"] * 3, [""] * 3, [0] * 3, fs=360.0)
    assert [b.rr_ms for b in beats] == []


def test_batches_cover_every_beat_once(tmp_path: Path) -> None:
    write_record(tmp_path)
    beats = read_beats(tmp_path, "900")
    sent = [b for _, batch in batches(beats, 1_000) for b in batch.beats]
    assert len(sent) == len(beats) == 384
    dues = [due for due, _ in batches(beats, 1_000)]
    assert dues == sorted(dues)


def test_record_listing_needs_a_header(tmp_path: Path) -> None:
    write_record(tmp_path, "900")
    (tmp_path / "NOTES.atr").write_bytes(b"not a record")
    assert list_records(tmp_path) == ["900"]


def _replay(
    setup: GatewaySetup, wfdb_dir: Path, port: int, speed: float
) -> subprocess.Popen[bytes]:
    with (setup.root / "replay.log").open("ab") as log:  # the child keeps its own descriptor
        return _spawn(setup, wfdb_dir, port, speed, log)


def _spawn(
    setup: GatewaySetup, wfdb_dir: Path, port: int, speed: float, log: BinaryIO
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "device_emulators.cli",
            "replay",
            *("--wfdb", str(wfdb_dir), "--records", "900", "--speed", str(speed)),
            *("--keys-dir", str(setup.keys_dir), "--gateway-pub", str(setup.gateway_pub)),
            *("--port", str(port), "--prefix", "patient"),
            *("--summary", str(setup.root / "replay.json"), "--quiet"),
        ],
        stdout=log,
        stderr=log,
        env=_env(),
        cwd=ROOT,
    )


def _beats(setup: GatewaySetup) -> list[tuple[int, int, int, int]]:
    db = sqlite3.connect(f"file:{setup.config.db_path}?mode=ro", uri=True)
    try:
        return db.execute(
            "SELECT ts_ms, rr_ms, rhythm, beat_class FROM rr_beats WHERE device_id = ? "
            "ORDER BY ts_ms",
            ("patient-900",),
        ).fetchall()
    finally:
        db.close()


def beat_count(setup: GatewaySetup) -> int:
    if not setup.config.db_path.exists():
        return 0
    try:
        return len(_beats(setup))
    except sqlite3.OperationalError:
        return 0


def test_replay_into_a_gateway_beside_vitals_exactly_once(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    wfdb_dir = tmp_path / "wfdb"
    wfdb_dir.mkdir()
    expected = write_record(wfdb_dir)
    setup = make_gateway(tmp_path / "gw", mosquitto.port)
    enroll(setup, 1)  # an old-kind vitals wearable
    from device_emulators.cli import main as emulate_main  # noqa: PLC0415

    assert (
        emulate_main(
            [
                *("enroll", "--registry", str(setup.config.registry)),
                *("--keys-dir", str(setup.keys_dir), "--wfdb", str(wfdb_dir)),
                *("--prefix", "patient"),
            ]
        )
        == 0
    )
    daemon = DaemonProcess(setup)
    vitals = replay = None
    try:
        daemon.wait_connected()
        vitals = EmulatorProcess(setup, mosquitto.port, 1, 150, 50.0)
        # 5 recorded minutes in about 10 s: long enough to kill the gateway in the middle
        replay = _replay(setup, wfdb_dir, mosquitto.port, 30.0)
        wait_until(lambda: beat_count(setup) >= 64, 60, "the first beats to be stored")
        daemon.kill()  # SIGKILL: unacknowledged records come back from the broker
        assert beat_count(setup) < len(expected), "the replay ended before the kill"
        daemon = DaemonProcess(setup)
        daemon.wait_connected()
        assert replay.wait(120) == 0, (setup.root / "replay.log").read_text()
        vitals.wait(120)
        wait_until(lambda: beat_count(setup) >= len(expected), 60, "every beat stored")
        wait_until(lambda: stored_count(setup) >= 150, 60, "every vitals record stored")
        # records committed but not acknowledged before the kill come back: the replay window
        # refuses them, and nothing else is refused
        assert set(daemon.status()["rejected"]) <= {"replay"}
        assert daemon.terminate() == 0
    finally:
        for proc in (vitals, daemon):
            if proc is not None:
                proc.stop_quietly()
        if replay is not None and replay.poll() is None:
            replay.kill()
            replay.wait()
    stored = _beats(setup)
    # exactly once: every beat, in order, with its interval and ground truth, nothing more
    assert [(rr, rhythm, cls) for _, rr, rhythm, cls in stored] == expected
    assert stored_count(setup) == 150
    store = VitalsStore(setup.config.db_path)
    try:
        x, y = TASKS["rhythm"].windows(store, 1_000_000)
        assert y.tolist() == EXPECTED_LABELS
        assert x.shape == (len(EXPECTED_LABELS), TASKS["rhythm"].features)
        assert store.devices() == ["wearable-0001"]
        assert store.beat_devices() == ["patient-900"]
    finally:
        store.close()
    assert EXCLUDED not in y.tolist()
    assert set(y.tolist()) == {c.value for c in RhythmClass}


def _rr_payload(beats: list[tuple[int, int, int, int]], hr10: int = 0xFFFF) -> bytes:
    head = struct.pack(">BBQQHB", RR_KIND, RR_HEADER_SIZE, 1, 1_700_000_000_000, hr10, len(beats))
    return head + b"".join(struct.pack(">IHBB", *b) for b in beats)


MALFORMED = [
    _rr_payload([(1000, 150, 0, 0)]),  # an interval below 200 ms
    _rr_payload([(1000, 800, 0, 0)])[:-3],  # truncated
    _rr_payload([(1000, 800, 99, 0)]),  # unknown rhythm
    _rr_payload([(1000, 800, 0, 0), (1500, 800, 0, 0)]),  # 800 ms interval in a 500 ms gap
    bytes([7]) + bytes(40),  # an unknown record kind
]


def test_malformed_rr_records_are_rejected_with_a_reason(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    setup = make_gateway(tmp_path / "gw", mosquitto.port)
    enroll(setup, 1, prefix="strap")
    identity = load_identity(setup.keys_dir / "strap-0001.key")
    gateway = load_public_identity(setup.gateway_pub)
    layout = TopicLayout("iomt", gateway.name)
    daemon = DaemonProcess(setup)
    try:
        daemon.wait_connected()

        async def send() -> None:
            import aiomqtt  # noqa: PLC0415

            sessions, _ = await establish(mosquitto.port, layout, gateway, [identity])
            session = sessions[identity.name]
            topic = layout.topic(TopicKind.RECORD, identity.name)
            good = _rr_payload([(1000, 800, 0, 0)], hr10=750)
            async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="rr-bad") as c:
                for payload in [*MALFORMED, good]:
                    await c.publish(topic, session.seal(payload, topic.encode()), qos=1)

        asyncio.run(send())
        wait_until(
            lambda: daemon.status().get("rr_beats_stored") == 1,
            30,
            "the well-formed batch to be stored",
        )
        status = daemon.status()
        assert status["rejected"] == {"bad_payload": len(MALFORMED)}
        assert status["records_accepted"] == 1
        assert "reason=bad_payload" in daemon.log_tail(50)
        assert daemon.terminate() == 0
    finally:
        daemon.stop_quietly()


@pytest.mark.parametrize("speed", ["0", "-1"])
def test_replay_cli_refuses_a_bad_speed(tmp_path: Path, speed: str) -> None:
    from device_emulators.cli import main as emulate_main  # noqa: PLC0415

    with pytest.raises(SystemExit) as exc:
        emulate_main(
            [
                *("replay", "--wfdb", str(tmp_path), "--speed", speed),
                *("--keys-dir", str(tmp_path), "--gateway-pub", str(tmp_path / "g.pub")),
            ]
        )
    assert exc.value.code == 2


def test_enroll_takes_devices_or_records_not_both(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from device_emulators.cli import main as emulate_main  # noqa: PLC0415

    write_record(tmp_path, "900")
    base = ["enroll", "--registry", str(tmp_path / "r.json"), "--keys-dir", str(tmp_path / "k")]
    assert emulate_main(base) == 2
    assert emulate_main([*base, "--devices", "1", "--wfdb", str(tmp_path)]) == 2
    assert "exactly one of --devices and --wfdb" in capsys.readouterr().err
    assert emulate_main([*base, "--wfdb", str(tmp_path), "--records", "900,901"]) == 2
    assert "records ['901'] not found" in capsys.readouterr().err
    assert (
        emulate_main([*base, "--wfdb", str(tmp_path), "--records", "900", "--prefix", "patient"])
        == 0
    )
    assert (tmp_path / "k" / "patient-900.key").is_file()


@pytest.mark.parametrize("command", ["run", "replay"])
def test_emulator_says_when_the_broker_is_unreachable(
    tmp_path: Path, parties: Parties, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    """Nothing listens on the port: the command ends with exit 1 and says why, and leaves no
    task behind (its task group owns the hub)."""
    from device_emulators.cli import main as emulate_main  # noqa: PLC0415

    write_record(tmp_path, "900")
    keys = tmp_path / "k"
    enroll = ["enroll", "--registry", str(tmp_path / "r.json"), "--keys-dir", str(keys)]
    assert emulate_main([*enroll, "--devices", "1"]) == 0
    assert emulate_main([*enroll, "--wfdb", str(tmp_path), "--prefix", "patient"]) == 0
    save_public_identity(parties.gateway.public, tmp_path / "g.pub")
    port = free_port()
    common = ["--keys-dir", str(keys), "--gateway-pub", str(tmp_path / "g.pub")]
    common += ["--port", str(port), "--connect-timeout", "1", "--quiet"]
    chosen = ["--devices", "1"] if command == "run" else ["--wfdb", str(tmp_path)]
    assert emulate_main([command, *chosen, *common]) == 1
    assert f"broker 127.0.0.1:{port} unreachable for 1 s" in capsys.readouterr().err
