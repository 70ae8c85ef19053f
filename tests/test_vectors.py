"""Known-answer vectors: X-Wing's published ones and pqlink's own (tests/data/*.json).

Each is checked twice: by the independent decoder in tests/pqlink_reference.py, written from
docs/protocol.md with `cryptography` alone, and by pqlink itself."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from pqlink import (
    ContentType,
    Identity,
    Registry,
    RekeyPolicy,
    Role,
    SessionRole,
    SigAlg,
    open_envelope,
    parse_init,
    parse_response,
    peek_envelope,
)
from pqlink.handshake import _key_schedule
from pqlink.keys import HybridPrivateKey, SigningKey, xwing_combine
from pqlink.record import Session
from tools import make_pqlink_vectors

from . import pqlink_reference as ref

DATA = Path(__file__).parent / "data"
XWING = json.loads((DATA / "xwing_vectors.json").read_text())["vectors"]
OURS = json.loads((DATA / "pqlink_vectors.json").read_text())


def _h(value: str) -> bytes:
    return bytes.fromhex(value)


# --- X-Wing (draft-connolly-cfrg-xwing-kem) ---------------------------------------------------


@pytest.mark.parametrize("vector", XWING, ids=lambda v: v["sk"][:8])
def test_xwing_vectors_with_cryptography_alone(vector: dict[str, str]) -> None:
    expanded = hashlib.shake_256(_h(vector["sk"])).digest(96)
    sk_m = mlkem.MLKEM768PrivateKey.from_seed_bytes(expanded[:64])
    sk_x = x25519.X25519PrivateKey.from_private_bytes(expanded[64:])
    pk_x = sk_x.public_key().public_bytes_raw()
    if "pk" in vector:
        assert sk_m.public_key().public_bytes_raw() + pk_x == _h(vector["pk"])
    ct = _h(vector["ct"])
    # Encapsulation is deterministic only on the X25519 side (cryptography has no
    # derandomised ML-KEM encapsulation): ct_X is the public key of eseed[32:64].
    ek_x = x25519.X25519PrivateKey.from_private_bytes(_h(vector["eseed"])[32:])
    assert ct[1088:] == ek_x.public_key().public_bytes_raw()
    ss_m = sk_m.decapsulate(ct[:1088])
    ss_x = sk_x.exchange(x25519.X25519PublicKey.from_public_bytes(ct[1088:]))
    assert ss_x == ek_x.exchange(x25519.X25519PublicKey.from_public_bytes(pk_x))
    assert ref.xwing_combiner(ss_m, ss_x, ct[1088:], pk_x) == _h(vector["ss"])


@pytest.mark.parametrize("vector", XWING, ids=lambda v: v["sk"][:8])
def test_xwing_vectors_through_pqlink(vector: dict[str, str]) -> None:
    key = HybridPrivateKey.from_xwing_seed(_h(vector["sk"]))
    if "pk" in vector:
        assert key.public_key().raw == _h(vector["pk"])
    assert key.decapsulate(_h(vector["ct"])) == _h(vector["ss"])


def test_combiner_puts_the_label_last() -> None:
    parts = [bytes([i]) * 32 for i in range(4)]
    expected = hashlib.sha3_256(b"".join(parts) + b"\\.//^\\").digest()
    assert xwing_combine(*parts) == expected == ref.xwing_combiner(*parts)


def test_xwing_seed_must_be_32_bytes() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        HybridPrivateKey.from_xwing_seed(bytes(31))


# --- pqlink's own vectors ---------------------------------------------------------------------


def _identity(doc: dict[str, Any]) -> Identity:
    kem = None
    if "kem_seed" in doc:
        kem = HybridPrivateKey(_h(doc["kem_seed"]), _h(doc["x25519"]))
    return Identity(
        doc["id"],
        Role(doc["role"]),
        SigningKey(SigAlg.from_label(doc["sig_alg"]), _h(doc["sig_seed"])),
        kem,
    )


def check_reference(v: dict[str, Any]) -> None:
    """Everything in a vector file, decoded by the independent decoder only."""
    ids = v["identities"]
    for doc in ids.values():
        kem_public = b""
        if "kem_seed" in doc:
            kem_public = ref.hybrid_public(_h(doc["kem_seed"]), _h(doc["x25519"]))
            assert kem_public == _h(doc["kem_public"])
        fp = ref.fingerprint(
            doc["id"], doc["role"], ref.ALG_CODES[doc["sig_alg"]], _h(doc["sig_public"]), kem_public
        )
        assert fp.hex() == doc["fingerprint"]

    comb = v["combiner"]
    gw = ids[comb["recipient"]]
    assert ref.hybrid_decapsulate(
        _h(gw["kem_seed"]), _h(gw["x25519"]), _h(comb["ciphertext"])
    ) == _h(comb["shared_secret"])

    hs = v["handshake"]
    init_raw, resp_raw = _h(hs["init"]), _h(hs["response"])
    init, resp = ref.parse_init(init_raw), ref.parse_response(resp_raw)
    sensor, gateway = ids[hs["initiator"]], ids[hs["responder"]]
    assert (init.initiator, init.responder, resp.responder) == (
        sensor["id"],
        gateway["id"],
        gateway["id"],
    )
    assert init.versions == [1]
    assert init.suites == [0x0001]
    assert resp.suite == 0x0001
    ref.verify(
        init.sig_alg,
        _h(sensor["sig_public"]),
        init.signature,
        init.signed,
        b"pqlink1 handshake init",
    )
    ref.verify(
        ref.ALG_CODES[gateway["sig_alg"]],
        _h(gateway["sig_public"]),
        resp.signature,
        hashlib.sha256(init_raw + resp.core).digest(),
        b"pqlink1 handshake response",
    )
    assert (
        ref.hybrid_public(_h(hs["ephemeral_kem_seed"]), _h(hs["ephemeral_x25519"]))
        == init.key_share
    )
    shared = ref.hybrid_decapsulate(
        _h(hs["ephemeral_kem_seed"]), _h(hs["ephemeral_x25519"]), resp.ciphertext
    )
    assert shared.hex() == hs["shared_secret"]
    ks = ref.key_schedule(shared, init_raw, resp_raw)
    assert ks.finished == resp.finished
    for name in ("handshake_secret", "th_sig", "finished", "th_full", "master", "i2r", "r2i"):
        assert getattr(ks, name).hex() == hs[name], name
    assert ks.session_id.hex() == hs["session_id"]

    recs = v["records"]
    for i, item in enumerate(recs["items"]):
        rec = ref.open_record(_h(item["frame"]), ks.i2r, recs["topic"].encode())
        assert (rec.epoch, rec.counter, rec.session_id) == (
            i // recs["max_records"],
            i,
            ks.session_id,
        )
        assert rec.payload.hex() == item["payload"]

    env_v = v["envelope"]
    env = ref.parse_envelope(_h(env_v["frame"]))
    sender = ids[env_v["sender"]]
    assert (env.sender, env.content_type, env.round, env.model_version) == (
        sender["id"],
        env_v["content_type"],
        env_v["round"],
        env_v["model_version"],
    )
    assert (env.sample_count, env.created_ms) == (env_v["sample_count"], env_v["created_ms"])
    assert len(env.body) == len(_h(env_v["payload"])) + 16  # the body length counts the tag
    ref.verify(
        env.sig_alg, _h(sender["sig_public"]), env.signature, env.signed, b"pqlink1 envelope"
    )
    for name in env_v["recipients"]:
        doc = ids[name]
        fp = _h(doc["fingerprint"])
        assert fp in env.slots
        payload = ref.open_envelope_slot(env, fp, _h(doc["kem_seed"]), _h(doc["x25519"]))
        assert payload.hex() == env_v["payload"]


def test_own_vectors_with_the_independent_decoder() -> None:
    check_reference(OURS)


def test_generator_still_writes_vectors_the_decoder_accepts(tmp_path: Path) -> None:
    out = tmp_path / "v.json"
    assert make_pqlink_vectors.main(["--out", str(out)]) == 0
    fresh = json.loads(out.read_text())
    check_reference(fresh)
    # Keys come from fixed labels; only what OpenSSL randomises (ML-KEM encapsulation, hedged
    # ML-DSA signatures, and so the traffic secrets) differs from run to run.
    assert fresh["identities"] == OURS["identities"]


def test_own_vectors_through_pqlink() -> None:
    ids = {name: _identity(doc) for name, doc in OURS["identities"].items()}
    for name, ident in ids.items():
        assert ident.public.fingerprint == OURS["identities"][name]["fingerprint"]

    comb = OURS["combiner"]
    kem = ids[comb["recipient"]].kem_key
    assert kem is not None
    assert kem.decapsulate(_h(comb["ciphertext"])).hex() == comb["shared_secret"]

    hs = OURS["handshake"]
    init = parse_init(_h(hs["init"]))
    resp = parse_response(_h(hs["response"]))
    assert (init.initiator, init.responder, resp.responder) == (
        hs["initiator"],
        hs["responder"],
        hs["responder"],
    )
    keys = _key_schedule(_h(hs["shared_secret"]), init.raw, resp.before_finished)
    assert keys.finished == resp.finished == _h(hs["finished"])
    assert keys.initiator_to_responder.hex() == hs["i2r"]
    assert keys.responder_to_initiator.hex() == hs["r2i"]
    assert keys.session_id.hex() == hs["session_id"]

    recs = OURS["records"]
    topic = recs["topic"].encode()
    common: dict[str, Any] = {
        "session_id": _h(hs["session_id"]),
        "peer": ids[hs["responder"]].public,
        "suite": 1,
        "rekey": RekeyPolicy(max_records=recs["max_records"]),
        "now": 0.0,
    }
    sender = Session(
        role=SessionRole.INITIATOR, send_secret=_h(hs["i2r"]), recv_secret=bytes(32), **common
    )
    receiver = Session(
        role=SessionRole.RESPONDER, send_secret=bytes(32), recv_secret=_h(hs["i2r"]), **common
    )
    for item in recs["items"]:
        # Sealing is deterministic (nonce from the counter), so pqlink must write the same bytes.
        assert sender.seal(_h(item["payload"]), topic, now=0.0).hex() == item["frame"]
        assert receiver.open(_h(item["frame"]), topic).hex() == item["payload"]
    assert receiver.recv_epoch == 1

    env_v = OURS["envelope"]
    frame = _h(env_v["frame"])
    meta = peek_envelope(frame)
    assert meta.content_type is ContentType.GLOBAL_MODEL
    assert (meta.round, meta.model_version, meta.sample_count, meta.created_ms) == (
        env_v["round"],
        env_v["model_version"],
        env_v["sample_count"],
        env_v["created_ms"],
    )
    senders = Registry()
    senders.enroll(ids[env_v["sender"]].public)
    for name in env_v["recipients"]:
        opened = open_envelope(frame, ids[name], senders)
        assert opened.payload.hex() == env_v["payload"]
