"""A gateway's AMQP side alone, for the fault suite: the daemon's own spool and uplink, answering
each announced round at once with a sealed update of a fixed delta (no training).

Each answered round is appended to `sent.jsonl` once its update is durable in the spool, so the
suite knows exactly which updates were sent; a known delta per gateway lets it tell a
double-counted update from the global models."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from gateway.spool import Spool
from gateway.uplink import Uplink
from pqlink import ContentType, load_identity, load_public_identity, seal_envelope
from servicekit.logs import StderrLog
from wire.fl import ModelUpdate

_ANSWERED = "answered_round"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.amqp_gateway", description=__doc__)
    p.add_argument("--identity", type=Path, required=True)
    p.add_argument("--aggregator-pub", type=Path, required=True)
    p.add_argument("--url", required=True)
    p.add_argument("--dir", type=Path, required=True, help="spool and sent.jsonl go here")
    p.add_argument("--delta", type=float, required=True, help="every weight's delta")
    p.add_argument("--parameters", type=int, required=True)
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--pace", type=float, default=0.0, help="seconds between rounds")
    args = p.parse_args(argv)
    return asyncio.run(_run(args))


async def _run(args: argparse.Namespace) -> int:
    identity = load_identity(args.identity)
    aggregator = load_public_identity(args.aggregator_pub)
    delta = np.full(args.parameters, args.delta, np.float32)
    payload = ModelUpdate(delta.astype("<f4").tobytes(), args.parameters, {}).encode()
    pool = ThreadPoolExecutor(1, thread_name_prefix="spool")
    spool = Spool(args.dir / "spool.sqlite3")
    sent = args.dir / "sent.jsonl"
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    woken = asyncio.Event()

    async def on_global() -> None:
        woken.set()

    uplink = Uplink(
        args.url, identity.name, spool, pool, StderrLog(logging.INFO), on_global, max_delay=2.0
    )

    def answer() -> int | None:
        """Seal and spool the update of the newest announced round not answered yet."""
        item = spool.take_global()
        if item is None:
            return None
        round_ = item[0]
        with spool.transaction():
            spool.done_global(round_)
            if round_ <= spool.get_state(_ANSWERED, 0):
                return None  # a re-announcement after a coordinator restart
            frame = seal_envelope(
                identity,
                [aggregator],
                payload,
                content_type=ContentType.MODEL_UPDATE,
                round=round_,
                sample_count=args.samples,
            )
            spool.put_update(round_, frame)
            spool.set_state(_ANSWERED, round_)
        with sent.open("a") as fh:
            fh.write(json.dumps({"round": round_}) + "\n")
        return round_

    async def learner() -> None:
        while not stop.is_set():
            await woken.wait()
            woken.clear()
            if args.pace:
                await asyncio.sleep(args.pace)  # the round's "training" takes this long
            if await loop.run_in_executor(pool, answer) is not None:
                uplink.wake()

    async with asyncio.TaskGroup() as tg:
        tg.create_task(uplink.run(stop))
        task = tg.create_task(learner())
        woken.set()  # a model spooled before a restart is answered at once
        await stop.wait()
        task.cancel()
    await loop.run_in_executor(pool, spool.close)
    pool.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
