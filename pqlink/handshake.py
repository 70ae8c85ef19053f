"""The 1-RTT handshake: sans-IO state machines for initiator and responder.

Shaped after the TLS 1.3 key schedule with a hybrid KEM (X25519MLKEM768) and mutual signature
authentication compressed into one round trip; docs/protocol.md gives every byte."""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from pqlink._codec import Reader, Writer
from pqlink._errors import (
    AuthenticationError,
    DecodeError,
    ErrorReason,
    LocalProtocolError,
    NegotiationError,
    PqlinkError,
    ReplayError,
    UnknownPeerError,
)
from pqlink.identity import Identity, PublicIdentity, Registry
from pqlink.kdf import expand_label, hkdf_extract
from pqlink.keys import (
    HYBRID_CIPHERTEXT_SIZE,
    HYBRID_PUBLIC_KEY_SIZE,
    MLKEM768_CIPHERTEXT_SIZE,
    HybridPrivateKey,
    HybridPublicKey,
    SigAlg,
)
from pqlink.record import BytesLike, RekeyPolicy, Session, SessionRole

INIT_TYPE = 0x01
RESPONSE_TYPE = 0x02
PROTOCOL_VERSIONS = (1,)
RANDOM_SIZE = 16
FINISHED_SIZE = 32
_INIT_CONTEXT = b"pqlink1 handshake init"
_RESPONSE_CONTEXT = b"pqlink1 handshake response"
_EXTRACT_SALT = b"pqlink1 handshake"
MAX_INIT_SIZE = 8192
MAX_RESPONSE_SIZE = 8192
DEFAULT_MAX_CLOCK_SKEW = 120.0
_SIGNATURE_SIZES = frozenset(alg.signature_size for alg in SigAlg)


class Suite(enum.IntEnum):
    """Cipher suites: key exchange + AEAD + hash. The value is the 16-bit wire code."""

    X25519MLKEM768_ASCON128_SHA256 = 0x0001
    MLKEM768_ASCON128_SHA256 = 0x0002

    @property
    def ciphertext_size(self) -> int:
        if self is Suite.X25519MLKEM768_ASCON128_SHA256:
            return HYBRID_CIPHERTEXT_SIZE
        return MLKEM768_CIPHERTEXT_SIZE


@dataclass(frozen=True, slots=True)
class HandshakeConfig:
    """What one side accepts, in preference order (the responder's order decides)."""

    versions: tuple[int, ...] = PROTOCOL_VERSIONS
    suites: tuple[Suite, ...] = (Suite.X25519MLKEM768_ASCON128_SHA256,)
    max_clock_skew: float = DEFAULT_MAX_CLOCK_SKEW
    rekey: RekeyPolicy = field(default_factory=RekeyPolicy)
    replay_window: int = 1024

    def __post_init__(self) -> None:
        if not self.versions or not set(self.versions) <= set(PROTOCOL_VERSIONS):
            raise ValueError(
                f"versions {self.versions} must be a non-empty subset of {PROTOCOL_VERSIONS}"
            )
        if not self.suites or len(self.suites) > 8:
            raise ValueError("suites must list 1 to 8 suites")
        if self.max_clock_skew <= 0:
            raise ValueError(f"max_clock_skew must be > 0, got {self.max_clock_skew}")


#: Both sides offer and accept only the hybrid suite unless configured otherwise: the
#: ML-KEM-only suite is opt-in (list it in `suites`), so no default gives up X25519.
RESPONDER_DEFAULT = HandshakeConfig()


# --- messages -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InitMessage:
    """A decoded handshake init (not yet verified)."""

    versions: tuple[int, ...]
    suites: tuple[int, ...]
    initiator: str
    responder: str
    sig_alg: SigAlg
    timestamp_ms: int
    random: bytes
    key_share: bytes
    signature: bytes
    signed_part: bytes
    raw: bytes


def _encode_init_core(  # noqa: PLR0917 -- one positional per wire field, in wire order
    versions: tuple[int, ...],
    suites: tuple[int, ...],
    initiator: str,
    responder: str,
    sig_alg: SigAlg,
    timestamp_ms: int,
    random: bytes,
    key_share: bytes,
) -> bytes:
    w = Writer().u8(INIT_TYPE).u8(len(versions))
    for v in versions:
        w.u8(v)
    w.u8(len(suites))
    for s in suites:
        w.u16(s)
    w.identifier(initiator).identifier(responder).u8(sig_alg).u64(timestamp_ms)
    return w.raw(random).raw(key_share).getvalue()


def parse_init(frame: BytesLike) -> InitMessage:
    """Decode a handshake init; raises DecodeError on any malformation."""
    if len(frame) > MAX_INIT_SIZE:
        raise DecodeError(
            f"handshake init of {len(frame)} bytes exceeds {MAX_INIT_SIZE}",
            reason=ErrorReason.TOO_LARGE,
        )
    r = Reader(bytes(frame), "handshake init")
    if r.u8("type") != INIT_TYPE:
        raise DecodeError("frame is not a handshake init", reason=ErrorReason.WRONG_TYPE)
    n = r.u8("version count")
    if not 1 <= n <= 8:
        raise DecodeError(
            f"handshake init offers {n} versions (1-8 allowed)", reason=ErrorReason.BAD_COUNT
        )
    versions = tuple(r.u8("version") for _ in range(n))
    n = r.u8("suite count")
    if not 1 <= n <= 8:
        raise DecodeError(
            f"handshake init offers {n} suites (1-8 allowed)", reason=ErrorReason.BAD_COUNT
        )
    suites = tuple(r.u16("suite") for _ in range(n))
    initiator = r.identifier("initiator id")
    responder = r.identifier("responder id")
    sig_alg = SigAlg.from_wire(r.u8("signature algorithm"))
    timestamp_ms = r.u64("timestamp")
    random = r.raw(RANDOM_SIZE, "random")
    key_share = r.raw(HYBRID_PUBLIC_KEY_SIZE, "key share")
    signed_end = r.offset
    sig_len = r.u16("signature length")
    if sig_len != sig_alg.signature_size:
        raise DecodeError(
            f"signature length {sig_len} does not match {sig_alg.label}",
            reason=ErrorReason.BAD_SIGNATURE_LENGTH,
        )
    signature = r.raw(sig_len, "signature")
    r.end()
    raw = bytes(frame)
    return InitMessage(
        versions,
        suites,
        initiator,
        responder,
        sig_alg,
        timestamp_ms,
        random,
        key_share,
        signature,
        raw[:signed_end],
        raw,
    )


@dataclass(frozen=True, slots=True)
class ResponseMessage:
    """A decoded handshake response (not yet verified)."""

    version: int
    suite: int
    responder: str
    random: bytes
    kem_ciphertext: bytes
    signature: bytes
    finished: bytes
    core: bytes  # bytes covered by the responder's signature (after the init)
    before_finished: bytes  # core plus the signature field


def parse_response(frame: BytesLike) -> ResponseMessage:
    """Decode a handshake response; raises DecodeError on any malformation."""
    if len(frame) > MAX_RESPONSE_SIZE:
        raise DecodeError(
            f"handshake response of {len(frame)} bytes exceeds {MAX_RESPONSE_SIZE}",
            reason=ErrorReason.TOO_LARGE,
        )
    raw = bytes(frame)
    r = Reader(raw, "handshake response")
    if r.u8("type") != RESPONSE_TYPE:
        raise DecodeError("frame is not a handshake response", reason=ErrorReason.WRONG_TYPE)
    version = r.u8("version")
    suite_code = r.u16("suite")
    try:
        suite = Suite(suite_code)
    except ValueError:
        raise NegotiationError(
            f"response selects unknown suite {suite_code:#06x}", reason=ErrorReason.UNKNOWN_SUITE
        ) from None
    responder = r.identifier("responder id")
    random = r.raw(RANDOM_SIZE, "random")
    ct = r.raw(suite.ciphertext_size, "KEM ciphertext")
    core_end = r.offset
    sig_len = r.u16("signature length")
    # The responder's algorithm is checked when its signature is verified; here only the
    # lengths of the defined ML-DSA parameter sets are accepted.
    if sig_len not in _SIGNATURE_SIZES:
        raise DecodeError(
            f"signature length {sig_len} is not that of an ML-DSA parameter set",
            reason=ErrorReason.BAD_SIGNATURE_LENGTH,
        )
    signature = r.raw(sig_len, "signature")
    sig_end = r.offset
    finished = r.raw(FINISHED_SIZE, "finished")
    r.end()
    return ResponseMessage(
        version, suite, responder, random, ct, signature, finished, raw[:core_end], raw[:sig_end]
    )


# --- key schedule ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Keys:
    finished: bytes
    initiator_to_responder: bytes
    responder_to_initiator: bytes
    session_id: bytes


def _key_schedule(shared_secret: bytes, init_raw: bytes, resp_before_finished: bytes) -> _Keys:
    hs = hkdf_extract(_EXTRACT_SALT, shared_secret)
    th_sig = hashlib.sha256(init_raw + resp_before_finished).digest()
    finished_key = expand_label(hs, "r finished", b"", 32)
    finished = hmac.digest(finished_key, th_sig, "sha256")
    th_full = hashlib.sha256(init_raw + resp_before_finished + finished).digest()
    master = expand_label(hs, "master", th_full, 32)
    return _Keys(
        finished=finished,
        initiator_to_responder=expand_label(master, "i2r traffic", b"", 32),
        responder_to_initiator=expand_label(master, "r2i traffic", b"", 32),
        session_id=expand_label(master, "session id", b"", 8),
    )


def _response_digest(init_raw: bytes, core: bytes) -> bytes:
    return hashlib.sha256(init_raw + core).digest()


# --- initiator ------------------------------------------------------------------------------


class InitiatorState(enum.Enum):
    START = "start"
    WAIT_RESPONSE = "wait_response"
    ESTABLISHED = "established"
    FAILED = "failed"


class HandshakeInitiator:
    """Sensor (or gateway) side: `start()` gives the init frame, `receive()` the session."""

    def __init__(
        self,
        identity: Identity,
        responder: PublicIdentity,
        config: HandshakeConfig | None = None,
    ) -> None:
        self.identity = identity
        self.responder = responder
        self.config = config or HandshakeConfig()
        self.state = InitiatorState.START
        self._ephemeral: HybridPrivateKey | None = None
        self._init_raw = b""

    def start(self, now: float | None = None) -> bytes:
        if self.state is not InitiatorState.START:
            raise LocalProtocolError(
                f"start() called in state {self.state.value}", reason=ErrorReason.WRONG_STATE
            )
        wall = time.time() if now is None else now
        self._ephemeral = HybridPrivateKey.generate()
        core = _encode_init_core(
            self.config.versions,
            tuple(int(s) for s in self.config.suites),
            self.identity.name,
            self.responder.name,
            self.identity.signing_key.alg,
            int(wall * 1000),
            os.urandom(RANDOM_SIZE),
            self._ephemeral.public_key().raw,
        )
        signature = self.identity.signing_key.sign(core, _INIT_CONTEXT)
        self._init_raw = Writer().raw(core).u16(len(signature)).raw(signature).getvalue()
        self.state = InitiatorState.WAIT_RESPONSE
        return self._init_raw

    def receive(self, frame: BytesLike, now: float | None = None) -> Session:
        """Verify the response and return the established session; a failure is final."""
        if self.state is not InitiatorState.WAIT_RESPONSE:
            raise LocalProtocolError(
                f"receive() called in state {self.state.value}", reason=ErrorReason.WRONG_STATE
            )
        try:
            session = self._receive(frame, time.monotonic() if now is None else now)
        except PqlinkError:
            self.state = InitiatorState.FAILED
            self._ephemeral = None
            raise
        self.state = InitiatorState.ESTABLISHED
        self._ephemeral = None
        return session

    def _receive(self, frame: BytesLike, now: float) -> Session:
        msg = parse_response(frame)
        if msg.version not in self.config.versions:
            raise NegotiationError(
                f"responder chose version {msg.version}, which was not offered",
                reason=ErrorReason.VERSION_NOT_OFFERED,
            )
        suite = Suite(msg.suite)
        if suite not in self.config.suites:
            raise NegotiationError(
                f"responder chose suite {suite.name}, which was not offered",
                reason=ErrorReason.SUITE_NOT_OFFERED,
            )
        if msg.responder != self.responder.name:
            raise UnknownPeerError(
                f"response comes from {msg.responder!r}, expected {self.responder.name!r}",
                reason=ErrorReason.WRONG_RESPONDER,
            )
        self.responder.verify_key.verify(
            msg.signature, _response_digest(self._init_raw, msg.core), _RESPONSE_CONTEXT
        )
        ephemeral = self._ephemeral
        if ephemeral is None:
            raise LocalProtocolError(
                "no ephemeral key: start() was not called", reason=ErrorReason.WRONG_STATE
            )
        if suite is Suite.X25519MLKEM768_ASCON128_SHA256:
            shared = ephemeral.decapsulate(msg.kem_ciphertext)
        else:
            shared = ephemeral.mlkem.decapsulate(msg.kem_ciphertext)
        keys = _key_schedule(shared, self._init_raw, msg.before_finished)
        if not hmac.compare_digest(keys.finished, msg.finished):
            raise AuthenticationError(
                "handshake finished MAC does not verify", reason=ErrorReason.BAD_FINISHED
            )
        return Session(
            session_id=keys.session_id,
            role=SessionRole.INITIATOR,
            peer=self.responder,
            suite=suite,
            send_secret=keys.initiator_to_responder,
            recv_secret=keys.responder_to_initiator,
            rekey=self.config.rekey,
            now=now,
            replay_window=self.config.replay_window,
        )


# --- responder ------------------------------------------------------------------------------


class InitReplayCache:
    """Remembers recent inits (by initiator and random) until their timestamps go stale,
    so a captured init cannot open a second session. Bounded: when full, refuses."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self._seen: OrderedDict[bytes, float] = OrderedDict()

    def check_and_add(self, key: bytes, expires: float, now: float) -> None:
        seen = self._seen
        # An entry lives through its expiry instant: an init whose timestamp is exactly at the
        # skew limit is still accepted then, so its replay must still be found.
        while seen:
            oldest_key, oldest_exp = next(iter(seen.items()))
            if oldest_exp >= now:
                break
            del seen[oldest_key]
        if key in seen:
            raise ReplayError("handshake init was already used", reason=ErrorReason.INIT_REPLAYED)
        if len(seen) >= self.max_entries:
            raise ReplayError(
                "handshake replay cache is full; try again later",
                reason=ErrorReason.REPLAY_CACHE_FULL,
            )
        seen[key] = expires

    def __len__(self) -> int:
        return len(self._seen)


@dataclass(frozen=True, slots=True)
class HandshakeResult:
    response: bytes
    session: Session
    initiator: PublicIdentity


class HandshakeResponder:
    """Gateway (or aggregator) side: one call turns a verified init into response + session."""

    def __init__(
        self,
        identity: Identity,
        registry: Registry,
        config: HandshakeConfig | None = None,
        replay_cache: InitReplayCache | None = None,
    ) -> None:
        self.identity = identity
        self.registry = registry
        self.config = config or RESPONDER_DEFAULT
        self.replay_cache = replay_cache if replay_cache is not None else InitReplayCache()

    def respond(
        self, frame: BytesLike, now: float | None = None, monotonic: float | None = None
    ) -> HandshakeResult:
        wall = time.time() if now is None else now
        mono = time.monotonic() if monotonic is None else monotonic
        msg = parse_init(frame)
        version = next((v for v in self.config.versions if v in msg.versions), None)
        if version is None:
            raise NegotiationError(
                f"no common protocol version in {msg.versions}",
                reason=ErrorReason.NO_COMMON_VERSION,
            )
        suite = next((s for s in self.config.suites if s in msg.suites), None)
        if suite is None:
            raise NegotiationError(
                f"no common suite in {[hex(s) for s in msg.suites]}",
                reason=ErrorReason.NO_COMMON_SUITE,
            )
        if msg.responder != self.identity.name:
            raise UnknownPeerError(
                f"handshake is addressed to {msg.responder!r}, not to us",
                reason=ErrorReason.WRONG_RESPONDER,
            )
        peer = self.registry.lookup(msg.initiator)
        if peer.verify_key.alg is not msg.sig_alg:
            raise DecodeError(
                f"{msg.initiator!r} is enrolled with {peer.verify_key.alg.label}, "
                f"init claims {msg.sig_alg.label}",
                reason=ErrorReason.SIG_ALG_MISMATCH,
            )
        peer.verify_key.verify(msg.signature, msg.signed_part, _INIT_CONTEXT)
        skew = self.config.max_clock_skew
        age = wall - msg.timestamp_ms / 1000
        if abs(age) > skew:
            raise ReplayError(
                f"handshake init timestamp is {age:+.3f} s off (limit {skew:.0f} s)",
                reason=ErrorReason.CLOCK_SKEW,
            )
        # An init is acceptable while its timestamp is within the skew, which for one stamped
        # `skew` ahead lasts until 2*skew after it first arrives: remember it that long.
        self.replay_cache.check_and_add(
            msg.initiator.encode() + b"\0" + msg.random, wall + 2 * skew, wall
        )
        share = HybridPublicKey(msg.key_share)
        enc = (
            share.encapsulate()
            if suite is Suite.X25519MLKEM768_ASCON128_SHA256
            else (share.mlkem.encapsulate())
        )
        core = (
            Writer()
            .u8(RESPONSE_TYPE)
            .u8(version)
            .u16(suite)
            .identifier(self.identity.name)
            .raw(os.urandom(RANDOM_SIZE))
            .raw(enc.ciphertext)
            .getvalue()
        )
        signature = self.identity.signing_key.sign(
            _response_digest(msg.raw, core), _RESPONSE_CONTEXT
        )
        before_finished = Writer().raw(core).u16(len(signature)).raw(signature).getvalue()
        keys = _key_schedule(enc.shared_secret, msg.raw, before_finished)
        session = Session(
            session_id=keys.session_id,
            role=SessionRole.RESPONDER,
            peer=peer,
            suite=suite,
            send_secret=keys.responder_to_initiator,
            recv_secret=keys.initiator_to_responder,
            rekey=self.config.rekey,
            now=mono,
            replay_window=self.config.replay_window,
        )
        return HandshakeResult(before_finished + keys.finished, session, peer)
