"""Wire codec of the secure-aggregation messages, and the typed errors of the protocol.

Every decoder raises only MalformedMessageError; the values are frozen dataclasses."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from pqlink._codec import Reader, Writer
from pqlink._errors import (
    DecodeError,
    ErrorReason,
    LocalProtocolError,
    RemoteProtocolError,
    ReplayError,
)
from pqlink.ascon import hash256
from pqlink.keys import HYBRID_CIPHERTEXT_SIZE, HYBRID_PUBLIC_KEY_SIZE
from pqlink.shamir import SHARE_SIZE, InvalidShareError, Share

VERSION = 2
COMMITMENT_SIZE = 32
DIGEST_SIZE = 32
SEED_SIZE = 32
#: Two Shamir shares (self-mask seed, pair-key seed) under a 16-byte Ascon tag.
SHARE_CIPHERTEXT_SIZE = 2 * SHARE_SIZE + 16
#: One half of a pair-mask seed under a 16-byte Ascon tag.
ESCROW_CIPHERTEXT_SIZE = SEED_SIZE + 16
MAX_SIGNATURE_SIZE = 4627  # ML-DSA-87, the largest parameter set
MAX_CLIENTS = 0xFFFF
MAX_DIMENSION = 1 << 26


class SecAggError(RemoteProtocolError):
    """A secure-aggregation message was refused; `reason` is the stable name for logs."""

    default_reason = ErrorReason.SECAGG_REJECTED


class MalformedMessageError(SecAggError, DecodeError):
    default_reason = ErrorReason.MALFORMED


class ForgedMessageError(SecAggError):
    """A signature, an AEAD tag or a commitment did not verify."""

    default_reason = ErrorReason.FORGED


class ReplayedMessageError(SecAggError, ReplayError):
    """A second message of one kind from one sender in one round."""

    default_reason = ErrorReason.REPLAYED


class WrongRoundError(SecAggError):
    default_reason = ErrorReason.WRONG_ROUND


class UnexpectedSenderError(SecAggError):
    """The sender or recipient is no participant, no neighbour, or not who the transport says."""

    default_reason = ErrorReason.UNEXPECTED_SENDER


class UnmaskRefusedError(SecAggError):
    """An unmasking request an honest client must not answer (both kinds of share for one
    client, itself listed as dropped, too few survivors, or a second request)."""

    default_reason = ErrorReason.UNMASK_REFUSED


class SecAggStateError(LocalProtocolError):
    """A method was called in the wrong state of the round."""


class Kind(enum.IntEnum):
    ADVERT = 1
    # 2-5 carried the four messages of the former separate ciphertext and share stages
    MASKED_INPUT = 6
    UNMASK_REQUEST = 7
    UNMASK_RESPONSE = 8
    BUNDLE = 9
    KEY_SHARES = 10
    FORWARDED_KEY_SHARES = 11


class ShareKind(enum.IntEnum):
    """Which seed a revealed share belongs to."""

    SELF_MASK = 1  # b_u: revealed for survivors
    PAIR_KEY = 2  # p_u: revealed for clients that dropped


@dataclass(frozen=True, slots=True)
class Header:
    kind: Kind
    round_id: int
    sender: int

    def write(self) -> Writer:
        return Writer().u8(VERSION).u8(self.kind).u64(self.round_id).u16(self.sender)


def _read_header(data: bytes, kind: Kind) -> tuple[Header, Reader]:
    r = Reader(bytes(data), kind.name.lower())
    try:
        version = r.u8("version")
        got = r.u8("kind")
        round_id, sender = r.u64("round id"), r.u16("sender")
    except DecodeError as exc:
        raise _wrap(exc) from None
    if version != VERSION:
        raise MalformedMessageError(f"{kind.name.lower()}: version {version}, expected {VERSION}")
    if got != kind:
        raise MalformedMessageError(f"message kind {got}, expected {kind.value} ({kind.name})")
    return Header(kind, round_id, sender), r


def peek_header(data: bytes) -> Header:
    """Version, kind, round and sender of any message, unverified: for routing only."""
    try:
        r = Reader(bytes(data), "message")
        if r.u8("version") != VERSION:
            raise MalformedMessageError(f"unsupported version {data[0]}")
        code = r.u8("kind")
        try:
            kind = Kind(code)
        except ValueError:
            raise MalformedMessageError(f"unknown message kind {code}") from None
        return Header(kind, r.u64("round id"), r.u16("sender"))
    except MalformedMessageError:
        raise
    except DecodeError as exc:
        raise MalformedMessageError(str(exc)) from None


def _wrap(exc: Exception) -> MalformedMessageError:
    return MalformedMessageError(str(exc))


@dataclass(frozen=True, slots=True)
class Advert:
    """Round 0: a client's two fresh hybrid public keys (one for share keys, one, derived
    from its pair-key seed, for pair-mask halves) and commitments to its two seeds, signed
    with its ML-DSA identity; forwarded verbatim to its neighbours. `ahead`: made before its
    round was announced (for a pipelined opening), so not bound to the round's graph seed."""

    round_id: int
    sender: int
    public_key: bytes
    mask_key: bytes
    self_commitment: bytes
    pair_commitment: bytes
    signature: bytes
    ahead: bool = False

    def signed_part(self) -> bytes:
        return (
            Header(Kind.ADVERT, self.round_id, self.sender)
            .write()
            .u8(int(self.ahead))
            .raw(self.public_key)
            .raw(self.mask_key)
            .raw(self.self_commitment)
            .raw(self.pair_commitment)
            .getvalue()
        )

    def to_bytes(self) -> bytes:
        return self.signed_part() + Writer().u16(len(self.signature)).raw(self.signature).getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Advert:
        head, r = _read_header(data, Kind.ADVERT)
        try:
            flag = r.u8("made ahead")
            if flag > 1:
                raise MalformedMessageError(f"advert: made-ahead flag {flag}")
            pk = r.raw(HYBRID_PUBLIC_KEY_SIZE, "public key")
            mask_key = r.raw(HYBRID_PUBLIC_KEY_SIZE, "mask key")
            c_self = r.raw(COMMITMENT_SIZE, "self commitment")
            c_pair = r.raw(COMMITMENT_SIZE, "pair commitment")
            sig = r.raw(_signature_length(r), "signature")
            r.end()
        except MalformedMessageError:
            raise
        except DecodeError as exc:
            raise _wrap(exc) from None
        return cls(head.round_id, head.sender, pk, mask_key, c_self, c_pair, sig, bool(flag))


def _signature_length(r: Reader) -> int:
    n = r.u16("signature length")
    if n > MAX_SIGNATURE_SIZE:
        raise MalformedMessageError(f"signature length {n} over {MAX_SIGNATURE_SIZE}")
    return n


def _check_ids(ids: Sequence[int], field: str) -> None:
    if any(not 1 <= i <= MAX_CLIENTS for i in ids):
        raise MalformedMessageError(f"{field}: client id outside 1..{MAX_CLIENTS}")
    if len(set(ids)) != len(ids):
        raise MalformedMessageError(f"{field}: a client id appears twice")


@dataclass(frozen=True, slots=True)
class KeyShareEntry:
    """What a client sends one neighbour in the key-and-share stage: two encapsulations to
    the neighbour's advertised keys (one for the share key, one for its half of the pair-mask
    seed), its two Shamir shares under the share key, and its half escrowed for the server
    under a key only its pair-key seed opens."""

    recipient: int
    share_ciphertext: bytes  # KEM ciphertext to the neighbour's share key
    mask_ciphertext: bytes  # KEM ciphertext to the neighbour's mask key
    shares: bytes
    escrow: bytes

    def write(self, w: Writer) -> Writer:
        w.u16(self.recipient).raw(self.share_ciphertext).raw(self.mask_ciphertext)
        return w.raw(self.shares).raw(self.escrow)

    def digest(self) -> bytes:
        return hash256(self.write(Writer()).getvalue())

    @classmethod
    def read(cls, r: Reader) -> KeyShareEntry:
        return cls(
            r.u16("recipient"),
            r.raw(HYBRID_CIPHERTEXT_SIZE, "share-key ciphertext"),
            r.raw(HYBRID_CIPHERTEXT_SIZE, "mask-key ciphertext"),
            r.raw(SHARE_CIPHERTEXT_SIZE, "shares"),
            r.raw(ESCROW_CIPHERTEXT_SIZE, "escrow"),
        )


@dataclass(frozen=True, slots=True)
class KeyShares:
    """Round 1: one entry per neighbour, signed once over the entries' digests so that each
    recipient can check its own entry without seeing the others."""

    round_id: int
    sender: int
    entries: tuple[KeyShareEntry, ...]
    signature: bytes

    def digests(self) -> tuple[tuple[int, bytes], ...]:
        return tuple((e.recipient, e.digest()) for e in self.entries)

    def to_bytes(self) -> bytes:
        w = Header(Kind.KEY_SHARES, self.round_id, self.sender).write().u16(len(self.entries))
        for e in self.entries:
            e.write(w)
        return w.u16(len(self.signature)).raw(self.signature).getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> KeyShares:
        head, r = _read_header(data, Kind.KEY_SHARES)
        try:
            entries = tuple(KeyShareEntry.read(r) for _ in range(r.u16("count")))
            sig = r.raw(_signature_length(r), "signature")
            r.end()
        except DecodeError as exc:
            raise _wrap(exc) from None
        _check_ids([e.recipient for e in entries], "recipients")
        return cls(head.round_id, head.sender, entries, sig)


def digest_list_bytes(round_id: int, sender: int, digests: Sequence[tuple[int, bytes]]) -> bytes:
    """What a key-and-share message's signature covers."""
    w = Header(Kind.KEY_SHARES, round_id, sender).write().u16(len(digests))
    for v, d in digests:
        w.u16(v).raw(d)
    return w.getvalue()


@dataclass(frozen=True, slots=True)
class ForwardedKeyShares:
    """Round 1, server to recipient: the entry one neighbour addressed to it, with that
    neighbour's signed digest list."""

    round_id: int
    sender: int
    entry: KeyShareEntry
    digests: tuple[tuple[int, bytes], ...]
    signature: bytes

    def to_bytes(self) -> bytes:
        w = Header(Kind.FORWARDED_KEY_SHARES, self.round_id, self.sender).write()
        self.entry.write(w).u16(len(self.digests))
        for v, d in self.digests:
            w.u16(v).raw(d)
        return w.u16(len(self.signature)).raw(self.signature).getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> ForwardedKeyShares:
        head, r = _read_header(data, Kind.FORWARDED_KEY_SHARES)
        try:
            entry = KeyShareEntry.read(r)
            count = r.u16("digest count")
            digests = tuple(
                (r.u16("recipient"), r.raw(DIGEST_SIZE, "digest")) for _ in range(count)
            )
            sig = r.raw(_signature_length(r), "signature")
            r.end()
        except DecodeError as exc:
            raise _wrap(exc) from None
        _check_ids([v for v, _ in digests], "digests")
        return cls(head.round_id, head.sender, entry, digests, sig)


@dataclass(frozen=True, slots=True)
class MaskedInput:
    """Round 2: the masked vector, little-endian words of `word_bytes` (4 or 8)."""

    round_id: int
    sender: int
    modulus_bits: int
    dimension: int
    vector: bytes

    def to_bytes(self) -> bytes:
        w = Header(Kind.MASKED_INPUT, self.round_id, self.sender).write()
        return w.u8(self.modulus_bits).u32(self.dimension).raw(self.vector).getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> MaskedInput:
        head, r = _read_header(data, Kind.MASKED_INPUT)
        try:
            bits = r.u8("modulus bits")
            dim = r.u32("dimension")
            if not 1 <= bits <= 64:
                raise MalformedMessageError(f"modulus bits {bits} outside 1..64")
            if dim > MAX_DIMENSION:
                raise MalformedMessageError(f"dimension {dim} over {MAX_DIMENSION}")
            vector = r.raw(dim * word_bytes(bits), "vector")
            r.end()
        except MalformedMessageError:
            raise
        except DecodeError as exc:
            raise _wrap(exc) from None
        return cls(head.round_id, head.sender, bits, dim, vector)


def word_bytes(modulus_bits: int) -> int:
    return 4 if modulus_bits <= 32 else 8


@dataclass(frozen=True, slots=True)
class UnmaskRequest:
    """Round 3, server to survivors: who survived (their self-mask seeds are wanted) and who
    dropped after sharing keys (their pair-key seeds are wanted)."""

    round_id: int
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]

    def to_bytes(self) -> bytes:
        w = Header(Kind.UNMASK_REQUEST, self.round_id, 0).write().u16(len(self.survivors))
        for u in self.survivors:
            w.u16(u)
        w.u16(len(self.dropped))
        for u in self.dropped:
            w.u16(u)
        return w.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> UnmaskRequest:
        head, r = _read_header(data, Kind.UNMASK_REQUEST)
        if head.sender != 0:
            raise MalformedMessageError(f"unmask request from sender {head.sender}, not the server")
        try:
            survivors = tuple(r.u16("survivor") for _ in range(r.u16("survivor count")))
            dropped = tuple(r.u16("dropped") for _ in range(r.u16("dropped count")))
            r.end()
        except DecodeError as exc:
            raise _wrap(exc) from None
        _check_ids(survivors, "survivors")
        _check_ids(dropped, "dropped")
        return cls(head.round_id, survivors, dropped)


@dataclass(frozen=True, slots=True)
class UnmaskResponse:
    """Round 3: the shares the sender holds of each requested seed."""

    round_id: int
    sender: int
    shares: tuple[tuple[int, ShareKind, Share], ...]

    def to_bytes(self) -> bytes:
        w = Header(Kind.UNMASK_RESPONSE, self.round_id, self.sender).write().u16(len(self.shares))
        for owner, kind, share in self.shares:
            w.u16(owner).u8(kind).raw(share.to_bytes())
        return w.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> UnmaskResponse:
        head, r = _read_header(data, Kind.UNMASK_RESPONSE)
        out = []
        try:
            for _ in range(r.u16("count")):
                owner = r.u16("owner")
                code = r.u8("share kind")
                try:
                    kind = ShareKind(code)
                except ValueError:
                    raise MalformedMessageError(f"unknown share kind {code}") from None
                out.append((owner, kind, Share.from_bytes(r.raw(SHARE_SIZE, "share"))))
            r.end()
        except MalformedMessageError:
            raise
        except (DecodeError, InvalidShareError) as exc:
            raise _wrap(exc) from None
        if len({(o, k) for o, k, _ in out}) != len(out):
            raise MalformedMessageError("a share is given twice")
        return cls(head.round_id, head.sender, tuple(out))


def encode_bundle(round_id: int, messages: Sequence[bytes]) -> bytes:
    """Several forwarded messages in one frame, server to one client."""
    w = Header(Kind.BUNDLE, round_id, 0).write().u16(len(messages))
    for m in messages:
        w.u32(len(m)).raw(m)
    return w.getvalue()


def decode_bundle(data: bytes) -> tuple[int, tuple[bytes, ...]]:
    head, r = _read_header(data, Kind.BUNDLE)
    try:
        items = tuple(r.raw(r.u32("length"), "message") for _ in range(r.u16("count")))
        r.end()
    except DecodeError as exc:
        raise _wrap(exc) from None
    return head.round_id, items
