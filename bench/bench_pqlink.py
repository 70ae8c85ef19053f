"""Record layer, handshake responder and envelope benchmarks against their budgets.

Each figure comes with a baseline measured in the same run: ChaCha20-Poly1305 from
`cryptography` for a record, the bare ML-DSA/ML-KEM operations for handshake and envelope."""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from bench._timing import per_call_seconds, write
from pqlink import (
    ContentType,
    HandshakeInitiator,
    HandshakeResponder,
    Identity,
    InitReplayCache,
    Registry,
    Role,
    Session,
    SigAlg,
    open_envelope,
    seal_envelope,
)
from pqlink.keys import HybridPrivateKey

TOPIC = b"iomt/rec/wearable-0001"


def bench_records() -> dict[str, Any]:
    sensor = Identity.generate("wearable-0001", Role.SENSOR, SigAlg.ML_DSA_44)
    gateway = Identity.generate("gw-01", Role.GATEWAY)
    reg = Registry()
    reg.enroll(sensor.public)
    responder = HandshakeResponder(gateway, reg)

    def pair() -> tuple[Session, Session]:
        init = HandshakeInitiator(sensor, gateway.public)
        result = responder.respond(init.start())
        return init.receive(result.response), result.session

    client, _ = pair()
    payload = os.urandom(64)
    seal_s = per_call_seconds(lambda: client.seal(payload, TOPIC))
    client, server = pair()  # a fresh pair: the receiver follows the sender's key updates
    frames = [client.seal(payload, TOPIC) for _ in range(200_000)]
    it = iter(frames)
    open_s = per_call_seconds(lambda: server.open(next(it), TOPIC), min_time=0.05, repeats=5)
    chacha = ChaCha20Poly1305(os.urandom(32))
    nonce = os.urandom(12)
    chacha_s = per_call_seconds(lambda: chacha.encrypt(nonce, payload, TOPIC))
    return {
        "payload_bytes": 64,
        "frame_bytes": len(frames[0]),
        "seal_us": seal_s * 1e6,
        "open_us": open_s * 1e6,
        "baseline_chacha20poly1305_encrypt_us": chacha_s * 1e6,
        "seal_vs_bare_chacha_ratio": seal_s / chacha_s,
    }


def bench_handshake() -> dict[str, Any]:
    gateway = Identity.generate("gw-01", Role.GATEWAY)
    reg = Registry()
    sensors = [
        Identity.generate(f"wearable-{i:04d}", Role.SENSOR, SigAlg.ML_DSA_44) for i in range(8)
    ]
    for s in sensors:
        reg.enroll(s.public)
    frames = [HandshakeInitiator(sensors[i % 8], gateway.public).start() for i in range(3000)]
    responder = HandshakeResponder(gateway, reg, replay_cache=InitReplayCache(1_000_000))
    it = iter(frames)
    resp_s = per_call_seconds(lambda: responder.respond(next(it)), min_time=0.3, repeats=3)
    # The floor: what the responder must do anyway (verify one ML-DSA-44, sign one ML-DSA-65,
    # one hybrid encapsulation).
    sig = sensors[0].signing_key.sign(b"x" * 3000, b"ctx")
    vk = sensors[0].public.verify_key
    verify_s = per_call_seconds(lambda: vk.verify(sig, b"x" * 3000, b"ctx"))
    sign_s = per_call_seconds(lambda: gateway.signing_key.sign(b"y" * 32, b"ctx"))
    kem_pub = HybridPrivateKey.generate().public_key()
    encap_s = per_call_seconds(kem_pub.encapsulate)
    floor = verify_s + sign_s + encap_s
    return {
        "initiator_sig": "ML-DSA-44",
        "responder_sig": "ML-DSA-65",
        "suite": "X25519MLKEM768_ASCON128_SHA256",
        "responder_ms": resp_s * 1e3,
        "responder_handshakes_per_s_one_core": 1 / resp_s,
        "floor_ms_verify_sign_encap": floor * 1e3,
        "primitives_ms": {
            "mldsa44_verify": verify_s * 1e3,
            "mldsa65_sign": sign_s * 1e3,
            "hybrid_encapsulate": encap_s * 1e3,
        },
        "overhead_over_floor_ratio": resp_s / floor,
    }


def bench_envelope() -> dict[str, Any]:
    gateway = Identity.generate("gw-01", Role.GATEWAY)
    aggregator = Identity.generate("aggregator", Role.AGGREGATOR)
    reg = Registry()
    reg.enroll(gateway.public)
    payload = os.urandom(100 * 1024)

    def seal() -> bytes:
        return seal_envelope(
            gateway,
            [aggregator.public],
            payload,
            content_type=ContentType.MODEL_UPDATE,
            round=1,
            sample_count=100,
        )

    frame = seal()
    seal_s = per_call_seconds(seal, min_time=0.3, repeats=5)
    open_s = per_call_seconds(
        lambda: open_envelope(frame, aggregator, reg), min_time=0.3, repeats=5
    )
    sign_s = per_call_seconds(lambda: gateway.signing_key.sign(payload, b"ctx"), min_time=0.3)
    return {
        "payload_bytes": len(payload),
        "envelope_bytes": len(frame),
        "seal_and_sign_ms": seal_s * 1e3,
        "verify_and_open_ms": open_s * 1e3,
        "baseline_mldsa65_sign_100KiB_ms": sign_s * 1e3,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", help="JSON output path (default bench/results/pqlink.json)")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    records = bench_records()
    print(f"record 64 B: seal {records['seal_us']:.2f} us, open {records['open_us']:.2f} us")
    handshake = bench_handshake()
    print(f"handshake responder: {handshake['responder_handshakes_per_s_one_core']:.0f}/s")
    envelope = bench_envelope()
    print(
        f"envelope 100 KiB: seal+sign {envelope['seal_and_sign_ms']:.2f} ms, "
        f"verify+open {envelope['verify_and_open_ms']:.2f} ms"
    )
    budgets = [
        {
            "name": "record_seal_64B_us",
            "value": records["seal_us"],
            "limit": 10.0,
            "ok": records["seal_us"] < 10.0,
        },
        {
            "name": "record_open_64B_us",
            "value": records["open_us"],
            "limit": 10.0,
            "ok": records["open_us"] < 10.0,
        },
        {
            "name": "handshake_responder_per_s",
            "value": handshake["responder_handshakes_per_s_one_core"],
            "minimum": 400,
            "ok": handshake["responder_handshakes_per_s_one_core"] >= 400,
        },
        {
            "name": "envelope_seal_sign_100KiB_ms",
            "value": envelope["seal_and_sign_ms"],
            "limit": 5.0,
            "ok": envelope["seal_and_sign_ms"] < 5.0,
        },
        {
            "name": "envelope_verify_open_100KiB_ms",
            "value": envelope["verify_and_open_ms"],
            "limit": 5.0,
            "ok": envelope["verify_and_open_ms"] < 5.0,
        },
    ]
    write(
        "pqlink",
        {
            "records": records,
            "handshake": handshake,
            "envelope": envelope,
            "budgets": budgets,
            "seconds": time.perf_counter() - t0,
        },
        args.out,
    )
    return 0 if all(b["ok"] for b in budgets) else 1


if __name__ == "__main__":
    raise SystemExit(main())
