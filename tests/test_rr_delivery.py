"""RR beat batches delivered end to end like vitals: carried under the boot epoch, acknowledged
sealed once committed, kept by the wearable until then and resent under a new session; a
replay through a daemon that is down for seconds mid-stream stores every beat exactly once."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from device_emulators.cli import main as emulate_main
from device_emulators.replay import batches, read_beats
from gateway.ingest import Accepted
from pqlink.delivery import DeliveryAck, acks_for
from testbed.mosquitto import Mosquitto
from wire.rr import (
    RR_EPOCH_HEADER_SIZE,
    RR_HEADER_SIZE,
    BeatClass,
    Rhythm,
    RRBatch,
    RRBeat,
    decode_record,
)
from wire.vitals import MAX_EPOCH

from .harness import DaemonProcess, make_gateway, wait_until
from .test_replay import _beats, _replay, beat_count, write_record

OUTAGE_SECONDS = 4.0  # the fault itself: how long the gateway is down mid-stream


def _batch(epoch: int, seq: int = 3) -> RRBatch:
    return RRBatch(
        seq,
        1_700_000_000_000,
        (RRBeat(0, 800, Rhythm.NORMAL, BeatClass.NORMAL),),
        epoch,
    )


def test_rr_batch_carries_its_boot_epoch() -> None:
    batch = _batch(MAX_EPOCH)
    data = batch.encode()
    assert data[1] == RR_EPOCH_HEADER_SIZE
    assert decode_record(data) == batch
    with pytest.raises(ValueError, match="epoch=9223372036854775808 is out of range"):
        _batch(MAX_EPOCH + 1)
    with pytest.raises(ValueError, match="epoch=-1 is out of range"):
        _batch(-1)
    # A header without the epoch (the first version) is of epoch 0; one with it names it.
    legacy = bytes([data[0], RR_HEADER_SIZE]) + data[2 : 2 + RR_HEADER_SIZE] + data[-8:]
    assert decode_record(legacy) == _batch(0)


def test_rr_batch_is_acknowledged_under_its_epoch_and_seq() -> None:
    from gateway.ingest import _accepted  # noqa: PLC0415 -- the classifier's own constructor

    accepted = _accepted("patient-1", _batch(41, 9), 0, b"s" * 16)
    assert isinstance(accepted, Accepted)
    assert accepted.record_id == (41, 9)
    assert accepted.row is None
    assert len(accepted.beats) == 1
    (ack,) = acks_for(41, [accepted.record_id[1]])
    assert DeliveryAck.decode(ack.encode()).covers(9)
    assert not ack.covers(10)


def _garble_sessions(db_path: Path) -> None:
    db = sqlite3.connect(db_path)
    try:
        db.execute("UPDATE sessions SET state = randomblob(length(state))")
        db.commit()
    finally:
        db.close()


def test_rr_replay_through_a_daemon_down_mid_stream_stores_every_beat_once(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    wfdb_dir = tmp_path / "wfdb"
    wfdb_dir.mkdir()
    expected = write_record(wfdb_dir)
    total_batches = sum(1 for _ in batches(read_beats(wfdb_dir, "900"), 0))
    setup = make_gateway(tmp_path / "gw", mosquitto.port)
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
    replay = None
    try:
        daemon.wait_connected()
        replay = _replay(setup, wfdb_dir, mosquitto.port, 20.0)  # 5 recorded minutes in 15 s
        wait_until(lambda: beat_count(setup) >= 64, 60, "the first beats to be stored")
        assert daemon.terminate() == 0
        stopped_beats = beat_count(setup)
        assert stopped_beats < len(expected), "the replay ended before the outage"
        # While it is down its sessions are lost too: the wearable must handshake again and
        # resend, re-sealed, every batch not acknowledged (what the broker kept for the
        # gateway is sealed under the lost session and refused).
        _garble_sessions(setup.config.db_path)
        down_until = time.monotonic() + OUTAGE_SECONDS
        wait_until(lambda: time.monotonic() >= down_until, OUTAGE_SECONDS + 1, "the outage")
        daemon = DaemonProcess(setup)
        daemon.wait_connected()
        assert replay.wait(120) == 0, (setup.root / "replay.log").read_text()
        status = daemon.status()
        assert status.get("notices_sent", 0) >= 1
        assert daemon.terminate() == 0
    finally:
        daemon.stop_quietly()
        if replay is not None and replay.poll() is None:
            replay.kill()
            replay.wait()
    summary = json.loads((setup.root / "replay.json").read_text())
    # The replay returns only once every batch is acknowledged end to end.
    assert summary["records_sent"] == total_batches
    assert summary["records_acked"] == total_batches
    assert summary["unacknowledged"] == 0
    assert summary["notices"] >= 1
    assert summary["records_resent"] >= 1
    stored = _beats(setup)
    # Exactly once: every beat in order, with its interval and ground truth, nothing more.
    assert [(rr, rhythm, cls) for _, rr, rhythm, cls in stored] == expected
    assert "Traceback" not in daemon.log_path.read_text()
