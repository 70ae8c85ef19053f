"""Write pqlink's own known-answer vectors (tests/data/pqlink_vectors.json) from fixed inputs.

Keys, randoms and payloads come from SHAKE-256 of fixed labels; ML-KEM encapsulation and
ML-DSA signing stay randomised inside OpenSSL, so a re-run gives other but equally valid frames."""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pqlink import ContentType, Identity, RekeyPolicy, Role, SessionRole, SigAlg, seal_envelope
from pqlink.handshake import HandshakeInitiator, HandshakeResponder
from pqlink.identity import Registry
from pqlink.kdf import expand_label, hkdf_extract
from pqlink.keys import HybridPrivateKey, SigningKey
from pqlink.record import Session

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "pqlink_vectors.json"
TOPIC = "iomt/rec/kat-sensor"


def fixed(label: str, n: int) -> bytes:
    """n bytes determined by `label` alone."""
    return hashlib.shake_256(b"pqlink known-answer " + label.encode()).digest(n)


class _FixedRandom:
    """Stands in for os.urandom while the frames are built: a counter-mode SHAKE stream."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.calls = 0

    def __call__(self, n: int) -> bytes:
        self.calls += 1
        return fixed(f"{self.label} {self.calls}", n)


def _identity(name: str, role: Role, alg: SigAlg) -> Identity:
    kem = None
    if role is not Role.SENSOR:
        kem = HybridPrivateKey(fixed(f"{name} ml-kem", 64), fixed(f"{name} x25519", 32))
    return Identity(name, role, SigningKey(alg, fixed(f"{name} ml-dsa", 32)), kem)


def _identity_doc(ident: Identity) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": ident.name,
        "role": ident.role.value,
        "sig_alg": ident.signing_key.alg.label,
        "sig_seed": ident.signing_key.seed_bytes().hex(),
        "sig_public": ident.public.verify_key.raw.hex(),
        "fingerprint": ident.public.fingerprint,
    }
    if ident.kem_key is not None:
        mlkem_seed, x_secret = ident.kem_key.seeds()
        doc["kem_seed"] = mlkem_seed.hex()
        doc["x25519"] = x_secret.hex()
        doc["kem_public"] = ident.kem_key.public_key().raw.hex()
    return doc


def _patched(module: Any, name: str, value: object) -> Callable[[], None]:
    old = getattr(module, name)
    setattr(module, name, value)
    return lambda: setattr(module, name, old)


def build() -> dict[str, Any]:
    sensor = _identity("kat-sensor", Role.SENSOR, SigAlg.ML_DSA_44)
    gateway = _identity("kat-gateway", Role.GATEWAY, SigAlg.ML_DSA_65)
    gateway_b = _identity("kat-gateway-b", Role.GATEWAY, SigAlg.ML_DSA_65)
    aggregator = _identity("kat-aggregator", Role.AGGREGATOR, SigAlg.ML_DSA_65)

    # Combiner: one hybrid encapsulation to the gateway's KEM key.
    assert gateway.kem_key is not None
    enc = gateway.kem_key.public_key().encapsulate()
    combiner = {
        "recipient": gateway.name,
        "ciphertext": enc.ciphertext.hex(),
        "shared_secret": enc.shared_secret.hex(),
    }

    # Handshake: fixed ephemeral key, randoms and clock.
    ephemeral = HybridPrivateKey(fixed("ephemeral ml-kem", 64), fixed("ephemeral x25519", 32))
    restore_gen = _patched(HybridPrivateKey, "generate", classmethod(lambda cls: ephemeral))
    restore_rand = _patched(os, "urandom", _FixedRandom("handshake"))
    try:
        registry = Registry()
        registry.enroll(sensor.public)
        init = HandshakeInitiator(sensor, gateway.public)
        init_frame = init.start(now=1_767_225_600.0)
        result = HandshakeResponder(gateway, registry).respond(init_frame, now=1_767_225_601.5)
        session = init.receive(result.response, now=0.0)
    finally:
        restore_rand()
        restore_gen()
    response = result.response
    shared = ephemeral.decapsulate(response[-32 - 2 - 3309 - 1120 : -32 - 2 - 3309])
    hs = hkdf_extract(b"pqlink1 handshake", shared)
    th_sig = hashlib.sha256(init_frame + response[:-32]).digest()
    finished = hmac.digest(expand_label(hs, "r finished", b"", 32), th_sig, "sha256")
    th_full = hashlib.sha256(init_frame + response).digest()
    master = expand_label(hs, "master", th_full, 32)
    i2r = expand_label(master, "i2r traffic", b"", 32)
    handshake = {
        "initiator": sensor.name,
        "responder": gateway.name,
        "ephemeral_kem_seed": fixed("ephemeral ml-kem", 64).hex(),
        "ephemeral_x25519": fixed("ephemeral x25519", 32).hex(),
        "init": init_frame.hex(),
        "response": response.hex(),
        "shared_secret": shared.hex(),
        "handshake_secret": hs.hex(),
        "th_sig": th_sig.hex(),
        "finished": finished.hex(),
        "th_full": th_full.hex(),
        "master": master.hex(),
        "i2r": i2r.hex(),
        "r2i": expand_label(master, "r2i traffic", b"", 32).hex(),
        "session_id": session.session_id.hex(),
    }

    # Records: initiator to responder under i2r, three per epoch so one key update shows.
    sender = Session(
        session_id=session.session_id,
        role=SessionRole.INITIATOR,
        peer=gateway.public,
        suite=1,
        send_secret=i2r,
        recv_secret=bytes(32),
        rekey=RekeyPolicy(max_records=3),
        now=0.0,
    )
    records = []
    for i in range(5):
        payload = fixed(f"record payload {i}", 7 * i)
        frame = sender.seal(payload, TOPIC.encode(), now=0.0)
        records.append({"payload": payload.hex(), "frame": frame.hex()})
    epochs = []
    secret = i2r
    for _ in range(2):
        epochs.append(
            {
                "secret": secret.hex(),
                "key": expand_label(secret, "key", b"", 16).hex(),
                "iv": expand_label(secret, "iv", b"", 16).hex(),
            }
        )
        secret = expand_label(secret, "traffic upd", b"", 32)

    # Envelope: the aggregator's global model to two gateways.
    payload = fixed("envelope payload", 100)
    restore_rand = _patched(os, "urandom", _FixedRandom("envelope"))
    try:
        envelope = seal_envelope(
            aggregator,
            [gateway.public, gateway_b.public],
            payload,
            content_type=ContentType.GLOBAL_MODEL,
            round=7,
            model_version=3,
            sample_count=1234,
            now=1_767_225_602.0,
        )
    finally:
        restore_rand()

    return {
        "about": (
            "pqlink known-answer vectors; docs/protocol.md defines every field. "
            "Written by tools/make_pqlink_vectors.py; checked by tests/test_vectors.py."
        ),
        "identities": {i.name: _identity_doc(i) for i in (sensor, gateway, gateway_b, aggregator)},
        "combiner": combiner,
        "handshake": handshake,
        "records": {"topic": TOPIC, "max_records": 3, "epochs": epochs, "items": records},
        "envelope": {
            "sender": aggregator.name,
            "recipients": [gateway.name, gateway_b.name],
            "content_type": int(ContentType.GLOBAL_MODEL),
            "round": 7,
            "model_version": 3,
            "sample_count": 1234,
            "created_ms": 1_767_225_602_000,
            "payload": payload.hex(),
            "frame": envelope.hex(),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    args.out.write_text(json.dumps(build(), indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
