"""One gateway's secure-aggregation side alone, as its own process, for the secure-round
benchmark: the real `SecureLink` (blocking AMQP client, real crypto) answering `--rounds`
rounds with a fixed random update, as a gateway on its own device would (no other gateway
shares its interpreter).

Writes `--out` (JSON) after its rounds, then waits for SIGTERM: per round the process's CPU
seconds, the bytes it published and whether the round finished for it. With
`--vanish-in-round N` the process ends in its Nth round once its key shares are in (`os._exit`
at the next message the coordinator sends it, which comes after the key-sharing stage closed;
no goodbye to the broker: the way a gateway losing power drops out). Ending the moment the
shares are handed to the socket could lose them with the connection's reset, and the gateway
would drop out a stage early."""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
from pika.adapters.blocking_connection import BlockingChannel

from gateway.secure_link import SecureLink, SecureRoundResult
from gateway.secure_update import SecureUpdateSession
from pqlink import load_identity, load_public_identity, load_registry
from wire.secagg import SecAggKind, SecureRoundAnnouncement

ROUND_TIMEOUT = 300.0


class _VanishingLink(SecureLink):
    """Ends the process at the first message after this round's key shares went out (what the
    round has sent is in its result), when armed."""

    armed = False

    def _handle(
        self,
        channel: BlockingChannel,
        body: bytes,
        session: SecureUpdateSession | None,
        result: SecureRoundResult,
    ) -> SecureUpdateSession | None:
        if self.armed and SecAggKind.SHARE_KEYS in result.sent:
            os._exit(0)  # no close, no flush: the connection just ends
        return super()._handle(channel, body, session, result)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.secure_gateway", description=__doc__)
    p.add_argument("--identity", type=Path, required=True)
    p.add_argument("--aggregator-pub", type=Path, required=True)
    p.add_argument("--registry", type=Path, required=True, help="the enrolled gateways")
    p.add_argument("--url", required=True)
    p.add_argument("--rounds", type=int, required=True)
    p.add_argument("--parameters", type=int, required=True)
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ready", type=Path, required=True, help="created once the queue is consumed")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument(
        "--vanish-in-round",
        type=int,
        default=0,
        help="in this round (1 = the first) end abruptly once the key shares are in",
    )
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    if not 0 <= args.vanish_in_round <= args.rounds:
        p.error("--vanish-in-round must be between 0 (never) and --rounds")

    me = load_identity(args.identity)
    update = np.random.default_rng(args.seed).normal(0.0, 0.01, args.parameters)

    def source(_a: SecureRoundAnnouncement) -> tuple[np.ndarray, int]:
        return update, args.samples

    link = (_VanishingLink if args.vanish_in_round else SecureLink)(
        args.url,
        me,
        load_public_identity(args.aggregator_pub),
        load_registry(args.registry),
        source,
    )
    # Stopped by SIGTERM only: a gateway that left as soon as its part of the last round was
    # done would tear its interpreter down while the coordinator still finishes that round.
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda _sig, _frame: stop.set())
    rounds: list[dict[str, object]] = []
    try:
        for r in range(1, args.rounds + 1):
            if isinstance(link, _VanishingLink):
                link.armed = r == args.vanish_in_round
            cpu0 = time.process_time()
            result = link.run_round(
                stop, after_round=r - 1, timeout=ROUND_TIMEOUT, on_ready=args.ready.touch
            )
            rounds.append(
                {
                    "round": result.round,
                    "cpu_s": time.process_time() - cpu0,
                    "bytes_sent": link.bytes_sent.get(result.round, 0),
                    "finished": result.finished,
                    "aborted": result.aborted,
                }
            )
        partial = args.out.with_name(args.out.name + ".part")  # whole or absent for the reader
        partial.write_text(json.dumps({"gateway": me.name, "rounds": rounds}))
        partial.replace(args.out)
        stop.wait()
    finally:
        link.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
