"""Secure-aggregation messages at their limits: a message cut short names the message, the
field and the offset; every bound is probed at its exact value and one past it, with the
exact error."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pqlink import ErrorReason
from pqlink._secagg_codec import (
    COMMITMENT_SIZE,
    DIGEST_SIZE,
    ESCROW_CIPHERTEXT_SIZE,
    MAX_CLIENTS,
    MAX_DIMENSION,
    MAX_SIGNATURE_SIZE,
    SHARE_CIPHERTEXT_SIZE,
    Advert,
    ForwardedKeyShares,
    Header,
    KeyShareEntry,
    KeyShares,
    Kind,
    MalformedMessageError,
    MaskedInput,
    ShareKind,
    UnmaskRequest,
    UnmaskResponse,
    decode_bundle,
    encode_bundle,
    peek_header,
    word_bytes,
)
from pqlink.keys import HYBRID_CIPHERTEXT_SIZE, HYBRID_PUBLIC_KEY_SIZE
from pqlink.shamir import SHARE_SIZE, Share

from .frame_cuts import check_cuts

SIG = 3309  # ML-DSA-65
HEADER = [("version", 1), ("kind", 1), ("round id", 8), ("sender", 2)]
ENTRY = [
    ("recipient", 2),
    ("share-key ciphertext", HYBRID_CIPHERTEXT_SIZE),
    ("mask-key ciphertext", HYBRID_CIPHERTEXT_SIZE),
    ("shares", SHARE_CIPHERTEXT_SIZE),
    ("escrow", ESCROW_CIPHERTEXT_SIZE),
]
SIGNED = [("signature length", 2), ("signature", SIG)]


def _cuts(
    parse: Callable[[bytes], object], frame: bytes, what: str, layout: list[tuple[str, int]]
) -> None:
    check_cuts(
        parse,
        frame,
        what,
        layout,
        error=MalformedMessageError,
        reason=ErrorReason.MALFORMED,
    )


def _advert(signature: bytes = b"\x05" * SIG, ahead: bool = True) -> Advert:
    return Advert(
        5,
        2,
        b"\x01" * HYBRID_PUBLIC_KEY_SIZE,
        b"\x02" * HYBRID_PUBLIC_KEY_SIZE,
        b"\x03" * COMMITMENT_SIZE,
        b"\x04" * COMMITMENT_SIZE,
        signature,
        ahead,
    )


def _entry(recipient: int) -> KeyShareEntry:
    return KeyShareEntry(
        recipient,
        b"\x06" * HYBRID_CIPHERTEXT_SIZE,
        b"\x07" * HYBRID_CIPHERTEXT_SIZE,
        b"\x08" * SHARE_CIPHERTEXT_SIZE,
        b"\x09" * ESCROW_CIPHERTEXT_SIZE,
    )


def _key_shares(*recipients: int) -> KeyShares:
    return KeyShares(5, 2, tuple(_entry(v) for v in recipients), b"\x0a" * SIG)


def _forwarded(*recipients: int, signature: bytes = b"\x0b" * SIG) -> ForwardedKeyShares:
    digests = tuple((v, bytes([v % 256]) * DIGEST_SIZE) for v in recipients)
    return ForwardedKeyShares(5, 2, _entry(3), digests, signature)


def test_advert_fields() -> None:
    layout = [
        *HEADER,
        ("made ahead", 1),
        ("public key", HYBRID_PUBLIC_KEY_SIZE),
        ("mask key", HYBRID_PUBLIC_KEY_SIZE),
        ("self commitment", COMMITMENT_SIZE),
        ("pair commitment", COMMITMENT_SIZE),
        *SIGNED,
    ]
    _cuts(Advert.from_bytes, _advert().to_bytes(), "advert", layout)


def test_key_shares_fields() -> None:
    layout = [*HEADER, ("count", 2), *ENTRY, *ENTRY, *SIGNED]
    _cuts(KeyShares.from_bytes, _key_shares(3, 4).to_bytes(), "key_shares", layout)


def test_forwarded_key_shares_fields() -> None:
    digest = [("recipient", 2), ("digest", DIGEST_SIZE)]
    layout = [*HEADER, *ENTRY, ("digest count", 2), *digest, *digest, *SIGNED]
    frame = _forwarded(3, 4).to_bytes()
    _cuts(ForwardedKeyShares.from_bytes, frame, "forwarded_key_shares", layout)


def test_masked_input_fields() -> None:
    frame = MaskedInput(5, 2, 33, 3, bytes(24)).to_bytes()
    layout = [*HEADER, ("modulus bits", 1), ("dimension", 4), ("vector", 24)]
    _cuts(MaskedInput.from_bytes, frame, "masked_input", layout)


def test_unmask_request_fields() -> None:
    frame = UnmaskRequest(5, (1, 2), (3, 4)).to_bytes()
    layout = [
        *HEADER,
        ("survivor count", 2),
        ("survivor", 2),
        ("survivor", 2),
        ("dropped count", 2),
        ("dropped", 2),
        ("dropped", 2),
    ]
    _cuts(UnmaskRequest.from_bytes, frame, "unmask_request", layout)


def test_unmask_response_fields() -> None:
    shares = ((1, ShareKind.SELF_MASK, Share(2, 7)), (3, ShareKind.PAIR_KEY, Share(2, 9)))
    frame = UnmaskResponse(5, 2, shares).to_bytes()
    one = [("owner", 2), ("share kind", 1), ("share", SHARE_SIZE)]
    _cuts(UnmaskResponse.from_bytes, frame, "unmask_response", [*HEADER, ("count", 2), *one, *one])


def test_bundle_fields_and_its_sender_is_the_server() -> None:
    frame = encode_bundle(5, [b"abc", b"de"])
    assert peek_header(frame) == Header(Kind.BUNDLE, 5, 0)
    assert decode_bundle(frame) == (5, (b"abc", b"de"))
    layout = [
        *HEADER,
        ("count", 2),
        ("length", 4),
        ("message", 3),
        ("length", 4),
        ("message", 2),
    ]
    _cuts(decode_bundle, frame, "bundle", layout)


def test_peek_header_fields_and_errors() -> None:
    frame = _advert().to_bytes()
    assert peek_header(frame) == Header(Kind.ADVERT, 5, 2)
    _cuts(peek_header, frame[:12], "message", HEADER)
    with pytest.raises(MalformedMessageError, match=r"^unknown message kind 99$") as err:
        peek_header(frame[:1] + b"\x63" + frame[2:])
    assert err.value.reason is ErrorReason.MALFORMED
    with pytest.raises(MalformedMessageError, match=r"^unsupported version 3$"):
        peek_header(b"\x03" + frame[1:])


def test_made_ahead_flag_round_trips_and_only_0_or_1() -> None:
    for ahead in (True, False):
        frame = _advert(ahead=ahead).to_bytes()
        assert Advert.from_bytes(frame) == _advert(ahead=ahead)
        assert Advert.from_bytes(frame).ahead is ahead
    damaged = bytearray(_advert().to_bytes())
    damaged[12] = 2  # the made-ahead flag, right after the header
    with pytest.raises(MalformedMessageError, match=r"^advert: made-ahead flag 2$"):
        Advert.from_bytes(bytes(damaged))


def test_signature_length_at_its_limit_and_one_over() -> None:
    longest = b"\x05" * MAX_SIGNATURE_SIZE
    assert Advert.from_bytes(_advert(longest).to_bytes()).signature == longest
    too_long = _advert(longest + b"\x05").to_bytes()
    with pytest.raises(MalformedMessageError, match=r"^signature length 4628 over 4627$"):
        Advert.from_bytes(too_long)
    fwd = _forwarded(3, signature=longest)
    assert ForwardedKeyShares.from_bytes(fwd.to_bytes()) == fwd
    with pytest.raises(MalformedMessageError, match=r"^signature length 4628 over 4627$"):
        ForwardedKeyShares.from_bytes(_forwarded(3, signature=longest + b"\x00").to_bytes())


def test_client_ids_at_their_limits_with_the_field_named() -> None:
    top = _key_shares(1, MAX_CLIENTS)
    assert KeyShares.from_bytes(top.to_bytes()) == top
    cases = [
        (KeyShares.from_bytes, _key_shares(0).to_bytes(), "recipients: client id outside"),
        (KeyShares.from_bytes, _key_shares(3, 3).to_bytes(), "recipients: a client id appears"),
        (ForwardedKeyShares.from_bytes, _forwarded(0).to_bytes(), "digests: client id outside"),
        (ForwardedKeyShares.from_bytes, _forwarded(4, 4).to_bytes(), "digests: a client id"),
        (UnmaskRequest.from_bytes, UnmaskRequest(5, (0,), ()).to_bytes(), "survivors: client id"),
        (UnmaskRequest.from_bytes, UnmaskRequest(5, (2, 2), ()).to_bytes(), "survivors: a client"),
        (UnmaskRequest.from_bytes, UnmaskRequest(5, (1,), (0,)).to_bytes(), "dropped: client id"),
        (UnmaskRequest.from_bytes, UnmaskRequest(5, (), (3, 3)).to_bytes(), "dropped: a client"),
    ]
    for decode, frame, message in cases:
        with pytest.raises(MalformedMessageError, match=f"^{message}"):
            decode(frame)
    assert str(_error(KeyShares.from_bytes, _key_shares(0).to_bytes())) == (
        f"recipients: client id outside 1..{MAX_CLIENTS}"
    )
    request = UnmaskRequest(5, (1, MAX_CLIENTS), (MAX_CLIENTS - 1,))
    assert UnmaskRequest.from_bytes(request.to_bytes()) == request
    forwarded = _forwarded(MAX_CLIENTS)
    assert ForwardedKeyShares.from_bytes(forwarded.to_bytes()) == forwarded


def _error(decode: Callable[[bytes], object], frame: bytes) -> MalformedMessageError:
    with pytest.raises(MalformedMessageError) as err:
        decode(frame)
    return err.value


def test_word_size_follows_the_modulus() -> None:
    assert [word_bytes(b) for b in (1, 31, 32, 33, 64)] == [4, 4, 4, 8, 8]
    for bits, size in ((1, 4), (32, 4), (33, 8), (64, 8)):
        frame = MaskedInput(5, 2, bits, 2, bytes(2 * size)).to_bytes()
        assert MaskedInput.from_bytes(frame).vector == bytes(2 * size)
        with pytest.raises(MalformedMessageError, match="truncated in vector"):
            MaskedInput.from_bytes(frame[:-1])


def test_modulus_bits_and_dimension_at_their_limits() -> None:
    for bits in (0, 65):
        frame = MaskedInput(5, 2, bits, 0, b"").to_bytes()
        with pytest.raises(MalformedMessageError, match=rf"^modulus bits {bits} outside 1..64$"):
            MaskedInput.from_bytes(frame)
    # the largest dimension is taken (its vector is not there, so the read stops at it)
    largest = MaskedInput(5, 2, 32, MAX_DIMENSION, b"").to_bytes()
    with pytest.raises(MalformedMessageError, match="truncated in vector") as err:
        MaskedInput.from_bytes(largest)
    assert f"need {4 * MAX_DIMENSION} bytes" in str(err.value)
    over = MaskedInput(5, 2, 32, MAX_DIMENSION + 1, b"").to_bytes()
    with pytest.raises(MalformedMessageError, match=rf"^dimension {MAX_DIMENSION + 1} over"):
        MaskedInput.from_bytes(over)


def test_unknown_share_kind_named() -> None:
    frame = bytearray(UnmaskResponse(5, 2, ((1, ShareKind.SELF_MASK, Share(2, 7)),)).to_bytes())
    frame[16] = 7  # the share kind, after the header, the count and the owner
    with pytest.raises(MalformedMessageError, match=r"^unknown share kind 7$") as err:
        UnmaskResponse.from_bytes(bytes(frame))
    assert err.value.reason is ErrorReason.MALFORMED
