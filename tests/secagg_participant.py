"""A gateway's secure-aggregation side as its own process, for tests that SIGKILL it: takes
part in one or more rounds with a seeded update and writes what it encoded and how each round
ended (the last round also under the round-less file names)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
from pathlib import Path

import numpy as np

from gateway.secure_link import SecureLink
from pqlink import load_identity, load_public_identity, load_registry
from wire.feature_scaling import moments_vector
from wire.secagg import SecAggKind, SecureRoundAnnouncement


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--identity", required=True)
    p.add_argument("--aggregator", required=True)
    p.add_argument("--peers", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--after-round", type=int, default=-1)
    p.add_argument("--rounds", type=int, default=1, help="consecutive rounds, one link")
    p.add_argument("--die-after", choices=[k.name for k in SecAggKind], default=None)
    p.add_argument("--windows", help="a statistics round: the moments of these (.npy) windows")
    p.add_argument("--bound", type=float, default=10.0, help="the statistics round's clip")
    args = p.parse_args()
    out = Path(args.out)

    def update(a: SecureRoundAnnouncement) -> tuple[np.ndarray, int]:
        if args.windows:  # as a gateway answers a statistics round (gateway/learning.py)
            windows = np.load(args.windows)
            v = moments_vector(windows, args.bound, a.dimension, a.clip)
            np.save(out / "update.npy", v)
            return v, len(windows)
        x = np.random.default_rng(args.seed).normal(0.0, 0.5, a.dimension)
        np.save(out / "update.npy", x)
        return x, args.samples

    def sent(kind: SecAggKind) -> None:
        (out / "sent").open("a").write(kind.name + "\n")
        if kind.name == args.die_after:
            os.kill(os.getpid(), signal.SIGKILL)  # vanish without a word, as a crash would

    me = load_identity(args.identity)
    link = SecureLink(
        args.url,
        me,
        load_public_identity(args.aggregator),
        load_registry(args.peers),
        update,
        on_sent=sent,
    )

    after = args.after_round
    try:
        _rounds(link, args.rounds, after, out)
    finally:
        link.close()
    return 0


def _rounds(link: SecureLink, rounds: int, after: int, out: Path) -> None:
    for _ in range(rounds):
        result = link.run_round(
            threading.Event(),
            after_round=after,
            timeout=240.0,
            on_ready=(out / "ready").touch,
        )
        doc = json.dumps(
            {
                "round": result.round,
                "finished": result.finished,
                "aborted": result.aborted,
                "refused": result.refused,
                "sent": [k.name for k in result.sent],
            }
        )
        for suffix in ("", f"-{result.round}"):
            if result.encoded is not None:
                np.save(out / f"encoded{suffix}.npy", result.encoded)
            (out / f"result{suffix}.json").write_text(doc)
        if result.round < 0:
            break
        after = result.round


if __name__ == "__main__":
    raise SystemExit(main())
