"""The emulators stop when told to: a stopped MQTT hub ends every wait on it (a publish waiting
for a connection, a handshake waiting for its response) with HubClosedError, and
`iomt-emulate run` ends on SIGTERM at once, with its summary, instead of waiting for a
connection that never comes until it is killed."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from device_emulators.cli import main as emulate_main
from device_emulators.errors import EmulatorError, HubClosedError
from device_emulators.hub import MqttHub
from pqlink import save_public_identity
from testbed import free_port
from testbed.mosquitto import Mosquitto
from tests.conftest import Parties
from tests.harness import (
    DaemonProcess,
    EmulatorProcess,
    enroll,
    make_gateway,
    stored_count,
    wait_until,
)

BOUND = 5.0  # seconds: a wait that outlives its hub by this much is a hang
# A whole emulator process stopping (its hubs drained and disconnected, its summary written),
# with room for a busy machine, under the MQTT client's 10 s timeout that a cut-off publish
# would wait out.
EXIT_BOUND = 8.0


async def _stopped_hub(
    port: int, wait: Callable[[MqttHub], Coroutine[Any, Any, object]], *, connect: bool
) -> BaseException | None:
    """Run a hub, start `wait` on it, stop the hub; what `wait` raised (None if it returned)."""
    hub = MqttHub("127.0.0.1", port, f"t-{port}")
    stop = asyncio.Event()
    runner = asyncio.create_task(hub.run(stop))
    if connect:
        await hub.wait_connected(BOUND)
    waiting: asyncio.Task[object] = asyncio.create_task(wait(hub))
    await asyncio.sleep(0)  # `wait` is waiting on the hub
    assert not waiting.done()
    stop.set()
    await asyncio.wait_for(runner, BOUND)
    try:
        await asyncio.wait_for(waiting, BOUND)
    except HubClosedError as exc:
        return exc
    return None


def test_publish_waiting_for_a_connection_ends_when_the_hub_stops() -> None:
    """No broker: the publish waits for a connection; the hub's stop ends it with the typed
    error (an EmulatorError) rather than leaving it waiting for ever."""
    port = free_port()

    async def publish(hub: MqttHub) -> None:
        await hub.publish("t/x", b"1")

    raised = asyncio.run(_stopped_hub(port, publish, connect=False))
    assert isinstance(raised, HubClosedError)
    assert isinstance(raised, EmulatorError)
    assert f"t-{port} has stopped" in str(raised)


def test_publish_on_a_stopped_hub_raises_at_once(mosquitto: Mosquitto) -> None:
    async def scenario() -> None:
        hub = MqttHub("127.0.0.1", mosquitto.port, "t-after")
        stop = asyncio.Event()
        runner = asyncio.create_task(hub.run(stop))
        await hub.wait_connected(BOUND)
        await hub.publish("t/x", b"connected: goes out")
        stop.set()
        await asyncio.wait_for(runner, BOUND)
        with pytest.raises(HubClosedError):
            await asyncio.wait_for(hub.publish("t/x", b"too late"), BOUND)
        with pytest.raises(HubClosedError):
            await asyncio.wait_for(hub.wait_connected(), BOUND)

    asyncio.run(scenario())


def test_publishes_in_flight_at_a_stop_are_acknowledged_before_the_disconnect(
    mosquitto: Mosquitto,
) -> None:
    """Publishes handed to the client when the stop comes are acknowledged and delivered, none
    cut off, and all end within the bound. (A stop amid a live gateway's stream, where a
    disconnect first left publishes waiting out the client's 10 s timeout, is the last test.)"""

    async def scenario() -> None:
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as watcher:
            await watcher.subscribe("t/burst", qos=1)
            hub = MqttHub("127.0.0.1", mosquitto.port, "t-burst")
            stop = asyncio.Event()
            runner = asyncio.create_task(hub.run(stop))
            await hub.wait_connected(BOUND)
            burst = [asyncio.create_task(hub.publish("t/burst", b"%d" % i)) for i in range(200)]
            await asyncio.sleep(0)  # each is with the client
            stop.set()
            t0 = time.monotonic()
            outcomes = await asyncio.wait_for(asyncio.gather(*burst, return_exceptions=True), BOUND)
            await asyncio.wait_for(runner, BOUND)
            assert time.monotonic() - t0 < BOUND
            delivered = sum(1 for o in outcomes if o is None)
            assert all(o is None or isinstance(o, HubClosedError) for o in outcomes), outcomes
            assert delivered == 200  # all were in flight before the stop: none cut off
            received = 0
            async with asyncio.timeout(BOUND):
                async for _ in watcher.messages:
                    received += 1
                    if received == delivered:
                        break

    asyncio.run(scenario())


def test_response_wait_ends_when_the_hub_stops(mosquitto: Mosquitto) -> None:
    async def wait_response(hub: MqttHub) -> bytes:
        return await hub.response(hub.response_queue("t/r"), 60.0)

    raised = asyncio.run(_stopped_hub(mosquitto.port, wait_response, connect=True))
    assert isinstance(raised, HubClosedError)


def test_response_returns_a_message_and_times_out_without_one(mosquitto: Mosquitto) -> None:
    async def scenario() -> None:
        hub = MqttHub("127.0.0.1", mosquitto.port, "t-resp")
        queue = hub.response_queue("t/resp")
        stop = asyncio.Event()
        runner = asyncio.create_task(hub.run(stop))
        try:
            await hub.wait_connected(BOUND)
            t0 = time.monotonic()
            with pytest.raises(TimeoutError):
                await hub.response(queue, 0.2)
            assert time.monotonic() - t0 >= 0.2
            async with aiomqtt.Client("127.0.0.1", mosquitto.port) as other:
                await other.publish("t/resp", b"answer", qos=1)
            assert await hub.response(queue, BOUND) == b"answer"
            assert queue.empty()
        finally:
            stop.set()
            await asyncio.wait_for(runner, BOUND)

    asyncio.run(scenario())


def test_emulator_ends_on_sigterm_while_its_wearables_wait_for_a_gateway(
    tmp_path: Path, parties: Parties, mosquitto: Mosquitto
) -> None:
    """No gateway answers the handshakes (each waits 10 s for its response, then sends a new
    init): SIGTERM ends the command within the bound, exit 0, with its summary written."""
    keys = tmp_path / "k"
    enroll = ["enroll", "--registry", str(tmp_path / "r.json"), "--keys-dir", str(keys)]
    assert emulate_main([*enroll, "--devices", "3"]) == 0
    save_public_identity(parties.gateway.public, tmp_path / "g.pub")

    async def first_init() -> None:
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as watcher:
            await watcher.subscribe("#", qos=1)
            proc = subprocess.Popen(
                [
                    *(sys.executable, "-m", "device_emulators.cli", "run", "--devices", "3"),
                    *("--keys-dir", str(keys), "--gateway-pub", str(tmp_path / "g.pub")),
                    *("--port", str(mosquitto.port), "--quiet", "--summary", str(summary_path)),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            procs.append(proc)
            async with asyncio.timeout(30):
                async for _ in watcher.messages:  # a handshake init: the wearables wait
                    return

    summary_path = tmp_path / "summary.json"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        asyncio.run(first_init())
        (proc,) = procs
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=EXIT_BOUND)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert proc.returncode == 0, err.decode()
    summary = json.loads(summary_path.read_text())
    assert summary["devices"] == 3
    assert summary["handshakes"] == 0
    assert summary["records_acked"] == 0


def test_emulator_streaming_to_a_gateway_ends_on_sigterm(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """Twenty wearables stream QoS 1 records to a live gateway daemon: SIGTERM ends the
    emulator within the bound, exit 0, its summary written (records were acknowledged)."""
    setup = make_gateway(tmp_path / "gw", mosquitto.port)
    enroll(setup, 20)
    daemon = DaemonProcess(setup)
    emulator: EmulatorProcess | None = None
    try:
        daemon.wait_connected()
        emulator = EmulatorProcess(setup, mosquitto.port, 20, 1_000_000, 40.0)
        wait_until(lambda: stored_count(setup) >= 200, 60, "records stored by the gateway")
        emulator.proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        summary = emulator.wait(EXIT_BOUND)
        assert time.monotonic() - t0 < EXIT_BOUND
        assert summary["devices"] == 20
        assert summary["handshakes"] >= 20
        assert summary["records_acked"] > 0
    finally:
        if emulator is not None:
            emulator.stop_quietly()
        daemon.stop_quietly()
