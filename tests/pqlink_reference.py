"""An independent decoder of pqlink frames, written from docs/protocol.md alone.

It uses `cryptography` directly and the Ascon extension only as a raw AEAD: no pqlink protocol
code, so the known-answer tests compare two implementations of the document."""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import mldsa, mlkem, x25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

from pqlink._ascon import decrypt as ascon_decrypt

XWING_LABEL = b"\\.//^\\"
SIG_SIZES = {1: 2420, 2: 3309}
SIG_PUBLIC: dict[int, type[mldsa.MLDSA44PublicKey] | type[mldsa.MLDSA65PublicKey]] = {
    1: mldsa.MLDSA44PublicKey,
    2: mldsa.MLDSA65PublicKey,
}
ALG_CODES = {"ML-DSA-44": 1, "ML-DSA-65": 2}


class Cursor:
    """Reads big-endian fields off the front of a frame; IndexError-free by asserting bounds."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        assert self.pos + n <= len(self.data), "frame truncated"
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int(struct.unpack(">H", self.take(2))[0])

    def u32(self) -> int:
        return int(struct.unpack(">I", self.take(4))[0])

    def u64(self) -> int:
        return int(struct.unpack(">Q", self.take(8))[0])

    def ident(self) -> str:
        return self.take(self.u8()).decode("ascii")

    def at_end(self) -> bool:
        return self.pos == len(self.data)


# --- primitives as the document states them ---------------------------------------------------


def expand_label(secret: bytes, label: str, context: bytes, length: int) -> bytes:
    full = b"pqlink1 " + label.encode()
    info = struct.pack(">H", length) + bytes([len(full)]) + full + bytes([len(context)]) + context
    return HKDFExpand(hashes.SHA256(), length, info).derive(secret)


def extract(salt: bytes, ikm: bytes) -> bytes:
    return HKDF.extract(hashes.SHA256(), salt, ikm)


def xwing_combiner(ss_m: bytes, ss_x: bytes, ct_x: bytes, pk_x: bytes) -> bytes:
    return hashlib.sha3_256(ss_m + ss_x + ct_x + pk_x + XWING_LABEL).digest()


def hybrid_decapsulate(mlkem_seed: bytes, x25519_secret: bytes, ct: bytes) -> bytes:
    assert len(ct) == 1120
    ss_m = mlkem.MLKEM768PrivateKey.from_seed_bytes(mlkem_seed).decapsulate(ct[:1088])
    sk_x = x25519.X25519PrivateKey.from_private_bytes(x25519_secret)
    ct_x = ct[1088:]
    ss_x = sk_x.exchange(x25519.X25519PublicKey.from_public_bytes(ct_x))
    return xwing_combiner(ss_m, ss_x, ct_x, sk_x.public_key().public_bytes_raw())


def hybrid_public(mlkem_seed: bytes, x25519_secret: bytes) -> bytes:
    pk_m = mlkem.MLKEM768PrivateKey.from_seed_bytes(mlkem_seed).public_key().public_bytes_raw()
    sk_x = x25519.X25519PrivateKey.from_private_bytes(x25519_secret)
    return pk_m + sk_x.public_key().public_bytes_raw()


def fingerprint(name: str, role: str, alg_code: int, sig_public: bytes, kem_public: bytes) -> bytes:
    h = hashlib.sha256(b"pqlink-identity-fp-v1\x00")
    for part in (name.encode(), role.encode(), bytes([alg_code]), sig_public, kem_public):
        h.update(len(part).to_bytes(4, "big") + part)
    return h.digest()


def verify(alg_code: int, public: bytes, signature: bytes, data: bytes, context: bytes) -> None:
    """Raises cryptography's InvalidSignature if the signature does not verify."""
    assert len(signature) == SIG_SIZES[alg_code]
    SIG_PUBLIC[alg_code].from_public_bytes(public).verify(signature, data, context)


# --- handshake --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Init:
    versions: list[int]
    suites: list[int]
    initiator: str
    responder: str
    sig_alg: int
    timestamp_ms: int
    random: bytes
    key_share: bytes
    signed: bytes
    signature: bytes


def parse_init(frame: bytes) -> Init:
    c = Cursor(frame)
    assert c.u8() == 0x01
    versions = [c.u8() for _ in range(c.u8())]
    suites = [c.u16() for _ in range(c.u8())]
    initiator, responder = c.ident(), c.ident()
    sig_alg = c.u8()
    timestamp_ms = c.u64()
    random = c.take(16)
    key_share = c.take(1216)
    signed = frame[: c.pos]
    signature = c.take(c.u16())
    assert c.at_end()
    return Init(
        versions,
        suites,
        initiator,
        responder,
        sig_alg,
        timestamp_ms,
        random,
        key_share,
        signed,
        signature,
    )


@dataclass(frozen=True)
class Response:
    version: int
    suite: int
    responder: str
    random: bytes
    ciphertext: bytes
    core: bytes
    signature: bytes
    before_finished: bytes
    finished: bytes


def parse_response(frame: bytes) -> Response:
    c = Cursor(frame)
    assert c.u8() == 0x02
    version = c.u8()
    suite = c.u16()
    responder = c.ident()
    random = c.take(16)
    ciphertext = c.take(1120 if suite == 0x0001 else 1088)
    core = frame[: c.pos]
    signature = c.take(c.u16())
    before_finished = frame[: c.pos]
    finished = c.take(32)
    assert c.at_end()
    return Response(
        version, suite, responder, random, ciphertext, core, signature, before_finished, finished
    )


@dataclass(frozen=True)
class KeySchedule:
    handshake_secret: bytes
    th_sig: bytes
    finished: bytes
    th_full: bytes
    master: bytes
    i2r: bytes
    r2i: bytes
    session_id: bytes


def key_schedule(shared: bytes, init: bytes, response: bytes) -> KeySchedule:
    hs = extract(b"pqlink1 handshake", shared)
    th_sig = hashlib.sha256(init + response[:-32]).digest()
    finished = hmac.new(expand_label(hs, "r finished", b"", 32), th_sig, "sha256").digest()
    th_full = hashlib.sha256(init + response).digest()
    master = expand_label(hs, "master", th_full, 32)
    return KeySchedule(
        hs,
        th_sig,
        finished,
        th_full,
        master,
        expand_label(master, "i2r traffic", b"", 32),
        expand_label(master, "r2i traffic", b"", 32),
        expand_label(master, "session id", b"", 8),
    )


# --- records ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    epoch: int
    session_id: bytes
    counter: int
    payload: bytes


def open_record(frame: bytes, secret_0: bytes, topic: bytes) -> Record:
    """Open a record with the epoch-0 traffic secret, ratcheting to the record's epoch."""
    assert frame[0] == 0x03
    epoch = frame[1]
    session_id = frame[2:10]
    counter = int.from_bytes(frame[10:18], "big")
    secret = secret_0
    for _ in range(epoch):
        secret = expand_label(secret, "traffic upd", b"", 32)
    key = expand_label(secret, "key", b"", 16)
    iv = int.from_bytes(expand_label(secret, "iv", b"", 16), "big")
    nonce = (iv ^ counter).to_bytes(16, "big")
    payload = ascon_decrypt(key, nonce, frame[:18] + topic, frame[18:])
    return Record(epoch, session_id, counter, payload)


# --- envelopes --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Envelope:
    content_type: int
    sig_alg: int
    sender: str
    round: int
    model_version: int
    sample_count: int
    created_ms: int
    envelope_id: bytes
    slots: dict[bytes, tuple[bytes, bytes]]
    header: bytes
    body: bytes
    signed: bytes
    signature: bytes


def parse_envelope(frame: bytes) -> Envelope:
    c = Cursor(frame)
    assert c.u8() == 0x04
    assert c.u8() == 1
    content_type, sig_alg = c.u8(), c.u8()
    sender = c.ident()
    round_, model_version, sample_count = c.u64(), c.u32(), c.u64()
    created_ms = c.u64()
    envelope_id = c.take(16)
    slots = {}
    for _ in range(c.u16()):
        fp = c.take(32)
        slots[fp] = (c.take(1120), c.take(32))
    header = frame[: c.pos]
    body = c.take(c.u32())  # the length counts the 16-byte tag
    signed = frame[: c.pos]
    signature = c.take(c.u16())
    assert c.at_end()
    return Envelope(
        content_type,
        sig_alg,
        sender,
        round_,
        model_version,
        sample_count,
        created_ms,
        envelope_id,
        slots,
        header,
        body,
        signed,
        signature,
    )


def open_envelope_slot(env: Envelope, fp: bytes, mlkem_seed: bytes, x25519_secret: bytes) -> bytes:
    ct, wrapped = env.slots[fp]
    ss = hybrid_decapsulate(mlkem_seed, x25519_secret, ct)
    kek = expand_label(extract(b"pqlink1 envelope wrap", ss), "wrap", fp + env.envelope_id, 16)
    content_key = ascon_decrypt(kek, env.envelope_id, fp, wrapped)
    return ascon_decrypt(content_key, env.envelope_id, env.header, env.body)
