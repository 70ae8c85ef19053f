"""`make demo`: a wearable and a gateway, in two processes, run the post-quantum handshake and
exchange sealed vitals records over a socket pair; key files and registry live in a temp dir."""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import socket
import struct
import sys
import tempfile
import time
from pathlib import Path

from pqlink import (
    HandshakeInitiator,
    HandshakeResponder,
    Identity,
    Registry,
    Role,
    SigAlg,
    Suite,
    load_identity,
    load_public_identity,
    load_registry,
    save_identity,
    save_public_identity,
    save_registry,
)

TOPIC = b"iomt/rec/wearable-0001"
_LEN = struct.Struct(">I")


def _send(sock: socket.socket, frame: bytes) -> None:
    sock.sendall(_LEN.pack(len(frame)) + frame)


def _recv(sock: socket.socket) -> bytes:
    def exactly(n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("peer closed the connection")
            buf += chunk
        return bytes(buf)

    (n,) = _LEN.unpack(exactly(4))
    return exactly(n)


def _gateway(sock: socket.socket, keydir: str, records: int) -> None:
    identity = load_identity(Path(keydir) / "gw-01.key")
    registry = load_registry(Path(keydir) / "registry.json")
    result = HandshakeResponder(identity, registry).respond(_recv(sock))
    _send(sock, result.response)
    session = result.session
    total = 0
    for _ in range(records):
        vitals = json.loads(session.open(_recv(sock), TOPIC))
        total += vitals["hr"]
    _send(
        sock,
        session.seal(json.dumps({"records": records, "mean_hr": total / records}).encode(), TOPIC),
    )
    sock.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__)
    parser.add_argument("--records", type=int, default=1000, help="records to send (default 1000)")
    args = parser.parse_args(argv)
    if args.records < 1:
        parser.error("--records must be at least 1")

    with tempfile.TemporaryDirectory(prefix="iomt-demo-") as keydir:
        sensor = Identity.generate("wearable-0001", Role.SENSOR, SigAlg.ML_DSA_44)
        gateway = Identity.generate("gw-01", Role.GATEWAY)
        save_identity(sensor, Path(keydir) / "wearable-0001.key")
        save_identity(gateway, Path(keydir) / "gw-01.key")
        save_public_identity(gateway.public, Path(keydir) / "gw-01.pub")
        registry = Registry()
        registry.enroll(sensor.public)
        save_registry(registry, Path(keydir) / "registry.json")
        print(
            f"identities  sensor {sensor.public.short_fingerprint} (ML-DSA-44), "
            f"gateway {gateway.public.short_fingerprint} (ML-DSA-65)"
        )

        ours, theirs = socket.socketpair()
        proc = mp.get_context("spawn").Process(target=_gateway, args=(theirs, keydir, args.records))
        proc.start()
        theirs.close()

        t0 = time.perf_counter()
        init = HandshakeInitiator(
            load_identity(Path(keydir) / "wearable-0001.key"),
            load_public_identity(Path(keydir) / "gw-01.pub"),
        )
        init_frame = init.start()
        _send(ours, init_frame)
        response = _recv(ours)
        session = init.receive(response)
        t1 = time.perf_counter()
        print(
            f"handshake   {(t1 - t0) * 1000:.1f} ms, init {len(init_frame)} B, "
            f"response {len(response)} B, suite {Suite(session.suite).name}"
        )

        sizes = 0
        for i in range(args.records):
            payload = json.dumps({"hr": 60 + i % 40, "spo2": 97, "t": 36.6}).encode()
            frame = session.seal(payload, TOPIC)
            sizes += len(frame)
            _send(ours, frame)
        summary = json.loads(session.open(_recv(ours), TOPIC))
        t2 = time.perf_counter()
        proc.join(timeout=30)
        ours.close()
        print(
            f"records     {args.records} sealed records ({sizes / args.records:.0f} B each) "
            f"in {(t2 - t1) * 1000:.1f} ms; gateway confirms {summary['records']} records, "
            f"mean heart rate {summary['mean_hr']:.1f}"
        )
        if proc.exitcode != 0 or summary["records"] != args.records:
            print("demo: the gateway process failed", file=sys.stderr)
            return 1
    print("demo: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
