"""Faults against the real daemon, mosquitto and emulators: lost sessions, replayed inits after
a restart, garbage floods, a full disk, broken store files and every failing start."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest

from device_emulators.cli import device_name
from gateway.cli import main as gateway_main
from servicekit.cli import ExitCode
from testbed.mosquitto import Mosquitto
from wire.topics import TopicKind, TopicLayout

from .harness import (
    DaemonProcess,
    EmulatorProcess,
    GatewaySetup,
    enroll,
    make_gateway,
    small_tmpfs,
    stored_count,
    wait_until,
)

LAYOUT = TopicLayout("iomt", "gw-01")


# Garbage frames of the flood test: five times the device's failure burst (400), so on an
# unloaded machine most of them land beyond the failure budget, while the test stays short.
GARBAGE_FRAMES = 2000


def _per_device(setup: GatewaySetup) -> dict[str, list[tuple[int, int]]]:
    db = sqlite3.connect(f"file:{setup.config.db_path}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT device_id, epoch, seq FROM vitals ORDER BY 1, 2, 3").fetchall()
    finally:
        db.close()
    out: dict[str, list[tuple[int, int]]] = {}
    for device, epoch, seq in rows:
        out.setdefault(device, []).append((epoch, seq))
    return out


def _assert_exactly_once(setup: GatewaySetup, devices: int, records: int) -> None:
    stored = _per_device(setup)
    assert sorted(stored) == [device_name("wearable", i + 1) for i in range(devices)]
    for device, keys in stored.items():
        assert len({epoch for epoch, _ in keys}) == 1, f"{device}: one boot, one epoch"
        assert [seq for _, seq in keys] == list(range(records)), f"{device}: lost or extra"


def _events(daemon: DaemonProcess, name: str) -> list[str]:
    return [line for line in daemon.log_path.read_text().splitlines() if f"event={name}" in line]


def _no_traceback(daemon: DaemonProcess) -> None:
    log = daemon.log_path.read_text()
    assert "Traceback" not in log
    assert "never retrieved" not in log
    assert "cannot rollback" not in log


def _run_to_exit(setup: GatewaySetup, timeout: float = 30.0) -> tuple[int, DaemonProcess]:
    """Run the daemon until it exits, with a log of this run only."""
    (setup.root / "daemon.log").unlink(missing_ok=True)
    daemon = DaemonProcess(setup)
    try:
        code = daemon.proc.wait(timeout)
    finally:
        daemon.stop_quietly()
    return code, daemon


@pytest.fixture
def gateway(tmp_path: Path, mosquitto: Mosquitto) -> GatewaySetup:
    return make_gateway(tmp_path / "gw", mosquitto.port)


def test_unusable_store_exits_5_and_recovery_works(gateway: GatewaySetup) -> None:
    enroll(gateway, 1)
    db = gateway.config.db_path
    db.write_bytes(b"not a database, a torn write" * 100)
    code, daemon = _run_to_exit(gateway)
    assert code == ExitCode.STORE
    (failed,) = _events(daemon, "daemon_failed")
    assert str(db) in failed
    assert "SQLITE_NOTADB" in failed
    assert "exit_code=5" in failed
    _no_traceback(daemon)
    assert gateway_main(["store", "recover", "--config", str(gateway.config_path)]) == 0
    (aside,) = db.parent.glob(db.name + ".broken-*")
    assert aside.read_bytes().startswith(b"not a database")
    daemon = DaemonProcess(gateway)
    try:
        daemon.wait_connected()
        assert daemon.terminate() == 0
    finally:
        daemon.stop_quietly()
    # a directory where the file should be: the same exit code, naming the path
    db.unlink()
    for extra in db.parent.glob(db.name + "-*"):
        extra.unlink()
    db.mkdir()
    code, daemon = _run_to_exit(gateway)
    assert code == ExitCode.STORE
    (failed,) = _events(daemon, "daemon_failed")
    assert "is a directory" in failed


def test_every_failing_start_is_one_event_and_its_code(tmp_path: Path) -> None:
    # no registry yet: a key or registry problem, said clearly
    setup = make_gateway(tmp_path / "a", 1)
    code, daemon = _run_to_exit(setup)
    assert code == ExitCode.KEYS
    (failed,) = _events(daemon, "daemon_failed")
    assert "registry" in failed
    assert "does not exist" in failed
    # the key of another gateway
    enroll(setup, 1)
    text = setup.config_path.read_text().replace('id = "gw-01"', 'id = "gw-02"')
    setup.config_path.write_text(text)
    code, daemon = _run_to_exit(setup)
    assert code == ExitCode.KEYS
    assert "gw-02" in _events(daemon, "daemon_failed")[0]
    # state_dir is a file
    other = make_gateway(tmp_path / "b", 1)
    blocker = tmp_path / "b" / "not-a-dir"
    blocker.write_text("x")
    text = other.config_path.read_text().replace('state_dir = "state"', f'state_dir = "{blocker}"')
    other.config_path.write_text(text)
    code, daemon = _run_to_exit(other)
    assert code == ExitCode.USAGE
    (failed,) = _events(daemon, "daemon_failed")
    assert "state_dir" in failed
    for d in (daemon,):
        _no_traceback(d)


def test_readme_exit_codes_match_the_code() -> None:
    from gateway.cli import EXIT_CODES  # noqa: PLC0415

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = dict(re.findall(r"^\| `(\d)` \| ([^|]+?) \|$", readme, re.MULTILINE))
    assert {int(k): v for k, v in table.items()} == EXIT_CODES


def test_session_lost_while_silent_or_garbled_every_record_once(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    setup = make_gateway(tmp_path / "gw", mosquitto.port, extra="[sessions]\nidle_timeout = 2\n")
    enroll(setup, 3)
    daemon = DaemonProcess(setup)
    emulator = None
    try:
        daemon.wait_connected()
        emulator = EmulatorProcess(setup, mosquitto.port, 3, 240, 10.0, "--resend-after", "600")
        wait_until(lambda: stored_count(setup) >= 60, 60, "the first records")
        # silent past idle_timeout: the gateway ends the sessions meanwhile
        emulator.proc.send_signal(signal.SIGSTOP)
        wait_until(lambda: daemon.status().get("sessions") == 0, 30, "the sessions to expire")
        emulator.proc.send_signal(signal.SIGCONT)
        wait_until(lambda: daemon.status().get("notices_sent", 0) >= 1, 30, "a notice")
        wait_until(lambda: stored_count(setup) >= 400, 60, "records after the re-handshake")
        # the session table garbled while the daemon is down: the same, from a restart
        assert daemon.terminate() == 0
        db = sqlite3.connect(setup.config.db_path)
        db.execute("UPDATE sessions SET state = randomblob(length(state))")
        db.commit()
        db.close()
        daemon = DaemonProcess(setup)
        daemon.wait_connected()
        summary = emulator.wait(120)
        assert summary["records_unacked"] == 0
        assert summary["notices"] >= 6  # each wearable was told twice to handshake again
        assert summary["buffer_overflow"] == 0
        assert daemon.terminate() == 0
    finally:
        daemon.stop_quietly()
        if emulator:
            emulator.stop_quietly()
    _assert_exactly_once(setup, 3, 240)
    _no_traceback(daemon)


async def _capture(port: int, topics: list[str], stop: asyncio.Event) -> list[tuple[str, bytes]]:
    seen: list[tuple[str, bytes]] = []
    async with aiomqtt.Client("127.0.0.1", port, identifier="capture") as client:
        await client.subscribe([(t, 1) for t in topics])
        reader = asyncio.ensure_future(_collect(client, seen))
        await stop.wait()
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    return seen


async def _collect(client: aiomqtt.Client, seen: list[tuple[str, bytes]]) -> None:
    async for message in client.messages:
        seen.append((message.topic.value, bytes(message.payload)))


async def _publish(port: int, messages: list[tuple[str, bytes]]) -> None:
    async with aiomqtt.Client("127.0.0.1", port, identifier="replayer") as client:
        for topic, payload in messages:
            await client.publish(topic, payload, qos=1)


def test_replayed_inits_after_restart_and_a_garbage_flood_lose_nothing(
    gateway: GatewaySetup, mosquitto: Mosquitto
) -> None:
    enroll(gateway, 2)
    victim = device_name("wearable", 1)
    daemon = DaemonProcess(gateway)
    emulator = None
    try:
        daemon.wait_connected()

        async def record_inits() -> list[tuple[str, bytes]]:
            stop = asyncio.Event()
            task = asyncio.create_task(
                _capture(mosquitto.port, [LAYOUT.subscription(TopicKind.HANDSHAKE)], stop)
            )
            await asyncio.sleep(0.5)  # subscribed before the wearables start
            nonlocal emulator
            emulator = EmulatorProcess(gateway, mosquitto.port, 2, 300, 10.0, "--resend-after", "5")
            deadline = time.monotonic() + 60
            while daemon.status().get("handshakes_ok", 0) < 2:
                assert time.monotonic() < deadline, "no sessions"
                await asyncio.sleep(0.05)
            stop.set()
            return await task

        inits = asyncio.run(record_inits())
        assert len(inits) == 2
        assert emulator is not None
        assert daemon.terminate() == 0
        daemon = DaemonProcess(gateway)
        daemon.wait_connected()
        asyncio.run(_publish(mosquitto.port, inits))
        wait_until(
            lambda: daemon.status().get("rejected", {}).get("replay", 0) >= 2, 30, "refusals"
        )
        assert daemon.status()["handshakes_ok"] == 0  # the live sessions were not replaced
        # garbage on the victim's topic, with its live session id and fresh counters
        rec = LAYOUT.topic(TopicKind.RECORD, victim)

        async def flood() -> int:
            async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="flood") as client:
                await client.subscribe(rec, qos=1)
                async for message in client.messages:
                    forged = bytearray(message.payload)
                    break
                for i in range(GARBAGE_FRAMES):
                    forged[10:18] = (1 << 40 | i).to_bytes(8, "big")
                    await client.publish(rec, bytes(forged), qos=1)
            return GARBAGE_FRAMES

        garbage = asyncio.run(flood())
        wait_until(
            lambda: daemon.status().get("rejected", {}).get("tampered", 0) >= garbage,
            60,
            "the flood to be counted",
        )
        summary = emulator.wait(180)
        assert summary["records_unacked"] == 0
        assert summary["handshakes"] == 2  # nobody had to handshake again
        assert daemon.terminate() == 0
    finally:
        daemon.stop_quietly()
        if emulator:
            emulator.stop_quietly()
    _assert_exactly_once(gateway, 2, 300)
    log = daemon.log_path.read_text()
    assert len(re.findall(r"event=record_rejected", log)) <= 60  # bounded, not one per frame
    _no_traceback(daemon)


@pytest.fixture
def small_state(tmp_path: Path) -> Iterator[Path]:
    """The gateway's state directory on a real 8 MiB tmpfs."""
    state = tmp_path / "gw" / "state"
    state.mkdir(parents=True)
    with small_tmpfs(state, "8m"):
        yield state


def test_disk_full_stops_acks_keeps_status_and_resumes(
    small_state: Path, mosquitto: Mosquitto
) -> None:
    setup = make_gateway(small_state.parent, mosquitto.port)
    enroll(setup, 4)
    daemon = DaemonProcess(setup)
    emulator = None
    filler = small_state / "filler"
    try:
        daemon.wait_connected()
        emulator = EmulatorProcess(setup, mosquitto.port, 4, 500, 20.0, "--resend-after", "5")
        wait_until(lambda: stored_count(setup) >= 100, 60, "the first records")
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 65536)
        os.close(fd)
        wait_until(lambda: daemon.status().get("store") == "full", 30, "store_full")
        full_at = stored_count(setup)
        before = daemon.status()["updated_at"]
        wait_until(lambda: daemon.status()["updated_at"] > before + 2, 10, "status updates")
        assert stored_count(setup) == full_at  # nothing committed, so nothing acknowledged
        filler.unlink()
        wait_until(lambda: daemon.status().get("store") == "ok", 30, "store_resumed")
        summary = emulator.wait(180)
        assert summary["records_unacked"] == 0
        assert daemon.terminate() == 0
    finally:
        daemon.stop_quietly()
        if emulator:
            emulator.stop_quietly()
    _assert_exactly_once(setup, 4, 500)
    (full,) = _events(daemon, "store_full")
    assert "database or disk is full" in full
    assert len(_events(daemon, "store_resumed")) == 1
    _no_traceback(daemon)
