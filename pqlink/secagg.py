"""Post-quantum secure aggregation (SecAgg / SecAgg+ with a hybrid KEM): sans-IO state
machines for a client (gateway) and the server (coordinator), bytes in and bytes out.

Round 0 adverts (signed fresh hybrid keys and seed commitments), round 1 keys and shares in
one signed message per client (both sides of a pair encapsulate to each other; Shamir shares
under the key the sender encapsulated; mask halves escrowed), round 2 masked inputs, round 3
unmasking. docs/secure-aggregation.md has the design."""

from __future__ import annotations

import dataclasses
import enum
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from pqlink._errors import AuthenticationError, DecodeError, ErrorReason, SignatureError
from pqlink._secagg_codec import (
    Advert,
    ForgedMessageError,
    ForwardedKeyShares,
    KeyShareEntry,
    KeyShares,
    MalformedMessageError,
    MaskedInput,
    ReplayedMessageError,
    SecAggError,
    SecAggStateError,
    ShareKind,
    UnexpectedSenderError,
    UnmaskRefusedError,
    UnmaskRequest,
    UnmaskResponse,
    WrongRoundError,
    decode_bundle,
    digest_list_bytes,
    encode_bundle,
    peek_header,
    word_bytes,
)
from pqlink._secagg_encoding import (
    InputEncoding,
    U64Vector,
    accumulate_masks,
    distributed_noise_std,
    expand_mask,
    modulus_bits_for,
)
from pqlink._secagg_graph import (
    COMPLETE_GRAPH_UP_TO,
    GraphParameters,
    SecAggParameterError,
    choose_parameters,
    neighbour_graph,
)
from pqlink.ascon import decrypt, encrypt, hash256
from pqlink.kdf import expand_label, hkdf_extract
from pqlink.keys import HybridPrivateKey, HybridPublicKey, SigningKey, VerifyKey
from pqlink.shamir import (
    InvalidShareError,
    NotEnoughSharesError,
    Share,
    recover_secret,
    split_secret,
)

__all__ = [
    "COMPLETE_GRAPH_UP_TO",
    "AggregateResult",
    "ForgedMessageError",
    "GraphParameters",
    "InputEncoding",
    "InsufficientNeighboursError",
    "MalformedMessageError",
    "MaskedVector",
    "ReplayedMessageError",
    "RoundAborted",
    "RoundConfig",
    "RoundKeys",
    "SecAggClient",
    "SecAggError",
    "SecAggEvent",
    "SecAggParameterError",
    "SecAggServer",
    "SecAggStateError",
    "UnexpectedSenderError",
    "UnmaskRefusedError",
    "WrongRoundError",
    "check_advert",
    "choose_parameters",
    "decode_bundle",
    "distributed_noise_std",
    "expand_mask",
    "modulus_bits_for",
    "neighbour_graph",
    "open_masked_input",
    "peek_header",
]


class InsufficientNeighboursError(SecAggError):
    """Fewer neighbours completed key agreement than the threshold: this client cannot share."""

    default_reason = ErrorReason.TOO_FEW_NEIGHBOURS


@dataclass(frozen=True, slots=True)
class RoundConfig:
    """What every party of one round agrees on before it starts (announced by the server,
    checked by the clients): participants, graph, threshold, input encoding."""

    round_id: int
    graph_seed: bytes
    participants: tuple[int, ...]
    degree: int
    threshold: int
    min_survivors: int
    encoding: InputEncoding

    def __post_init__(self) -> None:
        if not 0 <= self.round_id < 1 << 64:
            raise SecAggParameterError(f"round id {self.round_id} is not a u64")
        if len(self.graph_seed) != 32:
            raise SecAggParameterError(f"graph seed must be 32 bytes, got {len(self.graph_seed)}")
        ids = self.participants
        if len(set(ids)) != len(ids) or not all(1 <= u <= 0xFFFF for u in ids):
            raise SecAggParameterError("participants must be distinct ids in 1..65535")
        if not 1 <= self.threshold <= min(self.degree, len(ids) - 1):
            raise SecAggParameterError(f"threshold {self.threshold} outside 1..degree")
        # A survivor's self-mask seed comes back from t shares held by *other* survivors.
        if not self.threshold < self.min_survivors <= len(ids):
            raise SecAggParameterError("need threshold < min_survivors <= participants")


@dataclass(frozen=True, slots=True)
class SecAggEvent:
    """A structured event for the caller's log: a stable name and fields (never secrets)."""

    name: str
    fields: Mapping[str, str | int]


@dataclass(frozen=True, slots=True)
class RoundAborted:
    """The round stopped before anything was unmasked (or the unmasking could not finish)."""

    round_id: int
    stage: str
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class AggregateResult:
    """The exact sum modulo 2^k of the survivors' inputs, and who took part."""

    round_id: int
    total: U64Vector
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    encoding: InputEncoding

    def signed_sum(self) -> np.ndarray:
        return self.encoding.signed_sum(self.total)

    def decoded_sum(self) -> np.ndarray:
        return self.encoding.decode_sum(self.total)


@dataclass(frozen=True, slots=True)
class MaskedVector:
    """One client's masked input as a crypto worker folds it: indistinguishable from uniform
    modulo 2^k to anyone without the masks."""

    round_id: int
    sender: int
    modulus_bits: int
    vector: U64Vector


def open_masked_input(
    data: bytes, modulus_bits: int | None = None, dimension: int | None = None
) -> MaskedVector:
    """Decode and check a round-3 message (for a worker that sums masked inputs before the
    server sees them): the ring and length when given, values below 2^k always;
    MalformedMessageError otherwise."""
    msg = MaskedInput.from_bytes(data)
    modulus_bits = msg.modulus_bits if modulus_bits is None else modulus_bits
    dimension = msg.dimension if dimension is None else dimension
    if (msg.modulus_bits, msg.dimension) != (modulus_bits, dimension):
        raise MalformedMessageError(
            f"input of {msg.sender}: {msg.dimension} values mod 2^{msg.modulus_bits}, "
            f"expected {dimension} mod 2^{modulus_bits}"
        )
    dtype = "<u4" if word_bytes(msg.modulus_bits) == 4 else "<u8"
    vector = np.frombuffer(msg.vector, dtype=dtype).astype(np.uint64)
    if modulus_bits < 64 and np.any(vector >> np.uint64(modulus_bits)):
        raise MalformedMessageError(f"input of {msg.sender} holds values over 2^k")
    return MaskedVector(msg.round_id, msg.sender, msg.modulus_bits, vector)


# --- key schedule -----------------------------------------------------------------------------

_U64 = 8


def _rid(round_id: int) -> bytes:
    return round_id.to_bytes(_U64, "big")


def _id(u: int) -> bytes:
    return u.to_bytes(2, "big")


def _commitment(label: bytes, round_id: int, owner: int, seed: bytes) -> bytes:
    return hash256(b"iomt-secagg commit " + label + _rid(round_id) + _id(owner) + seed)


def _advert_context(round_id: int, sender: int, graph_seed: bytes | None) -> bytes:
    # An advert made when its round is announced binds the round's graph seed; one made
    # ahead (pipelined with the previous round's answer) cannot, and says so: a coordinator
    # then takes each kind only for its own kind of opening, never a stale one for a fresh.
    bound = b"ahead" if graph_seed is None else b"graph" + graph_seed
    return b"iomt-secagg advert" + _rid(round_id) + _id(sender) + bound


def _key_shares_context(round_id: int, sender: int, graph_seed: bytes) -> bytes:
    return b"iomt-secagg key shares" + _rid(round_id) + _id(sender) + graph_seed


def _direction(round_id: int, sender: int, recipient: int, ciphertext: bytes) -> bytes:
    return _rid(round_id) + _id(sender) + _id(recipient) + hash256(ciphertext)


def _share_key(shared: bytes, round_id: int, sender: int, recipient: int, ct: bytes) -> bytes:
    """The key of the shares `sender` sends `recipient`: from the secret it encapsulated."""
    prk = hkdf_extract(b"iomt-secagg share v2", shared)
    return expand_label(prk, "secagg share", _direction(round_id, sender, recipient, ct), 16)


def _mask_half(shared: bytes, round_id: int, sender: int, recipient: int, ct: bytes) -> bytes:
    """`sender`'s half of the pair-mask seed: from the secret it encapsulated to the
    recipient's mask key, bound to the direction and the ciphertext."""
    prk = hkdf_extract(b"iomt-secagg half v2", shared)
    return expand_label(prk, "secagg mask half", _direction(round_id, sender, recipient, ct), 32)


def _pair_seed(round_id: int, low: int, high: int, half_low: bytes, half_high: bytes) -> bytes:
    """The pair-mask seed: both directions' halves (each an X-Wing secret, ML-KEM-768 and
    X25519 combined, and transcript-bound), so that neither side alone chooses it."""
    prk = hkdf_extract(b"iomt-secagg pair v2", half_low + half_high)
    return expand_label(prk, "secagg mask", _rid(round_id) + _id(low) + _id(high), 32)


def _mask_key(pair_seed: bytes, round_id: int, owner: int) -> HybridPrivateKey:
    """The mask key pair is derived from the pair-key seed, so that the t shares that rebuild
    a dropped client's seed also rebuild its decapsulation key, and nothing else: its share
    key pair stays random, so the shares it received stay sealed."""
    seed = expand_label(pair_seed, "secagg mask key", _rid(round_id) + _id(owner), 32)
    return HybridPrivateKey.from_xwing_seed(seed)


def _share_nonce(sender: int, recipient: int) -> bytes:
    # One key per direction, one message under it: the direction makes the nonce unique anyway.
    return _id(sender) + _id(recipient) + bytes(12)


def _share_ad(round_id: int, sender: int, recipient: int) -> bytes:
    return b"iomt-secagg share" + _rid(round_id) + _id(sender) + _id(recipient)


def _escrow_key(pair_seed: bytes, round_id: int, owner: int, neighbour: int) -> bytes:
    return expand_label(
        pair_seed, "secagg escrow", _rid(round_id) + _id(owner) + _id(neighbour), 16
    )


def _escrow_ad(round_id: int, owner: int, neighbour: int) -> bytes:
    return b"iomt-secagg escrow" + _rid(round_id) + _id(owner) + _id(neighbour)


_ZERO_NONCE = bytes(16)  # each escrow key encrypts exactly one message


def _ring_mask(config: RoundConfig) -> np.uint64:
    return np.uint64((1 << config.encoding.modulus_bits) - 1)


def _vector_bytes(v: U64Vector, modulus_bits: int) -> bytes:
    return v.astype("<u4" if word_bytes(modulus_bits) == 4 else "<u8").tobytes()


# --- client -----------------------------------------------------------------------------------


class RoundKeys:
    """One client's fresh secrets for one round (hybrid share key pair, self-mask seed,
    pair-key seed and the mask key pair derived from it) and their signed advert. Made when
    the round is announced, or ahead of it while the client is idle; used for that round
    only, by one SecAggClient, then dropped."""

    __slots__ = ("advert", "client_id", "kem", "mask_kem", "pair_seed", "round_id", "self_seed")

    def __init__(
        self,
        round_id: int,
        client_id: int,
        identity: SigningKey,
        graph_seed: bytes | None = None,
    ) -> None:
        """`graph_seed`: the announced round's, or None for keys made ahead of the round."""
        if not 0 <= round_id < 1 << 64 or not 1 <= client_id <= 0xFFFF:
            raise SecAggParameterError(f"round {round_id} or client id {client_id} out of range")
        self.round_id = round_id
        self.client_id = client_id
        self.kem = HybridPrivateKey.generate()
        self.self_seed = secrets.token_bytes(32)
        self.pair_seed = secrets.token_bytes(32)
        self.mask_kem = _mask_key(self.pair_seed, round_id, client_id)
        advert = Advert(
            round_id,
            client_id,
            self.kem.public_key().raw,
            self.mask_kem.public_key().raw,
            _commitment(b"self", round_id, client_id, self.self_seed),
            _commitment(b"pair", round_id, client_id, self.pair_seed),
            b"",
            ahead=graph_seed is None,
        )
        context = _advert_context(round_id, client_id, graph_seed)
        signature = identity.sign(advert.signed_part(), context)
        self.advert = dataclasses.replace(advert, signature=signature).to_bytes()

    def __repr__(self) -> str:
        return f"RoundKeys(round={self.round_id}, client={self.client_id}, <secret>)"


def check_advert(data: bytes, round_id: int, key: VerifyKey) -> int:
    """The sender id of an advert for `round_id` signed under `key` (for a coordinator that
    keeps adverts sent ahead of their round); WrongRoundError, ForgedMessageError or
    MalformedMessageError otherwise."""
    advert = Advert.from_bytes(data)
    if advert.round_id != round_id:
        raise WrongRoundError(f"advert of round {advert.round_id}, expected {round_id}")
    if not advert.ahead:
        raise WrongRoundError(f"advert of {advert.sender} was made for a full setup")
    _verify_advert(advert, key, None)
    try:
        HybridPublicKey(advert.public_key)
        HybridPublicKey(advert.mask_key)
    except DecodeError as exc:
        raise MalformedMessageError(f"advert of {advert.sender}: {exc}") from None
    return advert.sender


class ClientState(enum.Enum):
    START = "start"
    ADVERTISED = "advertised"  # collecting neighbours' adverts
    KEYS_SENT = "keys_sent"  # collecting neighbours' keys and shares
    INPUT_SENT = "input_sent"  # waiting for the unmasking request
    DONE = "done"


class SecAggClient:
    """One gateway's side of one round. Methods named receive_* take one message and raise a
    SecAggError subclass if it is refused (the round goes on without it); the others move to
    the next stage and return the message to send to the server."""

    def __init__(
        self,
        config: RoundConfig,
        client_id: int,
        identity: SigningKey,
        peers: Mapping[int, VerifyKey],
        *,
        advertised: RoundKeys | None = None,
    ) -> None:
        """`advertised`: keys made ahead whose advert has already gone out; the client then
        starts collecting its neighbours' adverts."""
        if client_id not in config.participants:
            raise SecAggStateError(f"client {client_id} is not a participant of the round")
        keys = advertised or RoundKeys(config.round_id, client_id, identity, config.graph_seed)
        if (keys.round_id, keys.client_id) != (config.round_id, client_id):
            raise SecAggStateError(
                f"keys made for client {keys.client_id} of round {keys.round_id}, not for "
                f"client {client_id} of round {config.round_id}"
            )
        self.config = config
        self.client_id = client_id
        self.state = ClientState.START if advertised is None else ClientState.ADVERTISED
        self._identity = identity
        self._peers = peers
        graph = neighbour_graph(config.participants, config.degree, config.graph_seed)
        self.neighbours = graph[client_id]
        self._advert = keys.advert
        self._kem = keys.kem
        self._self_seed = keys.self_seed
        self._pair_seed = keys.pair_seed
        self._mask_kem = keys.mask_kem
        self._adverts: dict[int, Advert] = {}
        self._keys: dict[int, tuple[HybridPublicKey, HybridPublicKey]] = {}
        self._halves: dict[int, bytes] = {}  # neighbour -> this client's half of the pair seed
        self._pairs: dict[int, bytes] = {}  # neighbour -> pair-mask seed
        self._held: dict[int, tuple[Share, Share]] = {}  # neighbour -> (self share, pair share)
        self.events: list[SecAggEvent] = []

    # round 0
    def advertise(self) -> bytes:
        self._expect(ClientState.START)
        self.state = ClientState.ADVERTISED
        return self._advert

    def receive_advert(self, data: bytes) -> None:
        self._expect(ClientState.ADVERTISED)
        advert = Advert.from_bytes(data)
        self._check_peer_message(advert.round_id, advert.sender, self._adverts)
        _verify_advert(advert, self._peers[advert.sender], self.config.graph_seed)
        try:
            keys = HybridPublicKey(advert.public_key), HybridPublicKey(advert.mask_key)
        except DecodeError as exc:
            raise MalformedMessageError(f"advert of {advert.sender}: {exc}") from None
        self._adverts[advert.sender] = advert
        self._keys[advert.sender] = keys

    # round 1
    def key_shares(self) -> bytes:
        """One signed message: for each advertised neighbour, an encapsulation to each of its
        two keys, this client's shares under the first secret, and its half of the pair seed
        (from the second) escrowed under its pair-key seed for the server's recovery."""
        self._expect(ClientState.ADVERTISED)
        rid, me, t = self.config.round_id, self.client_id, self.config.threshold
        holders = sorted(self._keys)
        if len(holders) < t:
            raise InsufficientNeighboursError(
                f"{len(holders)} neighbours advertised keys, threshold {t}"
            )
        b_shares = split_secret(self._self_seed, t, len(holders), indices=holders)
        p_shares = split_secret(self._pair_seed, t, len(holders), indices=holders)
        entries = []
        for v, b_share, p_share in zip(holders, b_shares, p_shares, strict=True):
            share_kem, mask_kem = self._keys[v]
            for_shares, for_mask = share_kem.encapsulate(), mask_kem.encapsulate()
            key = _share_key(for_shares.shared_secret, rid, me, v, for_shares.ciphertext)
            plaintext = b_share.to_bytes() + p_share.to_bytes()
            sealed = encrypt(key, _share_nonce(me, v), _share_ad(rid, me, v), plaintext)
            half = _mask_half(for_mask.shared_secret, rid, me, v, for_mask.ciphertext)
            self._halves[v] = half
            escrow_key = _escrow_key(self._pair_seed, rid, me, v)
            escrow = encrypt(escrow_key, _ZERO_NONCE, _escrow_ad(rid, me, v), half)
            entries.append(
                KeyShareEntry(v, for_shares.ciphertext, for_mask.ciphertext, sealed, escrow)
            )
        unsigned = KeyShares(rid, me, tuple(entries), b"")
        signed = digest_list_bytes(rid, me, unsigned.digests())
        signature = self._identity.sign(
            signed, _key_shares_context(rid, me, self.config.graph_seed)
        )
        self.state = ClientState.KEYS_SENT
        return dataclasses.replace(unsigned, signature=signature).to_bytes()

    def receive_key_shares(self, data: bytes) -> None:
        """A neighbour's entry for this client: its shares, and its half of the pair seed."""
        self._expect(ClientState.KEYS_SENT)
        msg = ForwardedKeyShares.from_bytes(data)
        self._check_round(msg.round_id)
        entry, u, me = msg.entry, msg.sender, self.client_id
        if entry.recipient != me:
            raise UnexpectedSenderError(f"keys and shares addressed to {entry.recipient}")
        # a pair masks only if both sides encapsulated to each other
        if u not in self._halves:
            raise UnexpectedSenderError(f"no keys and shares expected from {u}")
        if u in self._held:
            raise ReplayedMessageError(f"second keys and shares from {u}")
        signed = digest_list_bytes(msg.round_id, u, msg.digests)
        context = _key_shares_context(msg.round_id, u, self.config.graph_seed)
        try:
            self._peers[u].verify(msg.signature, signed, context)
        except SignatureError:
            raise ForgedMessageError(f"keys and shares of {u} not signed by it") from None
        if dict(msg.digests).get(me) != entry.digest():
            raise ForgedMessageError(f"keys and shares from {u} are not the ones it signed")
        rid = self.config.round_id
        try:
            for_shares = self._kem.decapsulate(entry.share_ciphertext)
            for_mask = self._mask_kem.decapsulate(entry.mask_ciphertext)
        except DecodeError as exc:
            raise MalformedMessageError(f"ciphertext from {u}: {exc}") from None
        key = _share_key(for_shares, rid, u, me, entry.share_ciphertext)
        try:
            plain = decrypt(key, _share_nonce(u, me), _share_ad(rid, u, me), entry.shares)
        except AuthenticationError:
            raise ForgedMessageError(f"shares from {u} do not authenticate") from None
        try:
            b_share = Share.from_bytes(plain[: len(plain) // 2])
            p_share = Share.from_bytes(plain[len(plain) // 2 :])
        except InvalidShareError as exc:
            raise ForgedMessageError(f"shares from {u}: {exc}") from None
        if b_share.index != me or p_share.index != me:
            raise ForgedMessageError(f"shares from {u} are not at this client's index")
        theirs = _mask_half(for_mask, rid, u, me, entry.mask_ciphertext)
        mine = self._halves[u]
        low, high = (u, me) if u < me else (me, u)
        self._pairs[u] = _pair_seed(rid, low, high, *((theirs, mine) if u < me else (mine, theirs)))
        self._held[u] = (b_share, p_share)

    # round 2
    def masked_input(self, encoded: U64Vector) -> bytes:
        """y = x + PRG(b_u) + sum_{v > u} PRG(s_uv) - sum_{v < u} PRG(s_uv) mod 2^k, over the
        neighbours whose keys and shares arrived (exactly those that will mask with it)."""
        self._expect(ClientState.KEYS_SENT)
        enc = self.config.encoding
        x = np.asarray(encoded)
        if x.dtype != np.uint64 or x.shape != (enc.dimension,):
            raise SecAggStateError(f"input must be a uint64 vector of length {enc.dimension}")
        y = x.copy()
        held = sorted(self._held)
        rid, bits = self.config.round_id, enc.modulus_bits
        accumulate_masks(
            y, [self._self_seed], [1], round_id=rid, purpose=b"self", modulus_bits=bits
        )
        seeds = [self._pairs[v] for v in held]
        signs = [1 if v > self.client_id else -1 for v in held]
        accumulate_masks(y, seeds, signs, round_id=rid, purpose=b"pair", modulus_bits=bits)
        y &= _ring_mask(self.config)
        self.state = ClientState.INPUT_SENT
        rid = self.config.round_id
        vector = _vector_bytes(y, enc.modulus_bits)
        return MaskedInput(rid, self.client_id, enc.modulus_bits, enc.dimension, vector).to_bytes()

    # round 3
    def unmask(self, data: bytes) -> bytes:
        """Answer the server's one unmasking request, or refuse it (UnmaskRefusedError, and a
        `secagg_unmask_refused` event in `events`)."""
        if self.state is ClientState.DONE:
            self._refuse(self.config.round_id, "second_request", ())
        self._expect(ClientState.INPUT_SENT)
        request = UnmaskRequest.from_bytes(data)
        self._check_round(request.round_id)
        survivors, dropped = set(request.survivors), set(request.dropped)
        both = sorted(survivors & dropped)
        if both:
            self._refuse(request.round_id, "both_kinds_requested", both)
        if self.client_id in dropped:
            self._refuse(request.round_id, "self_listed_as_dropped", [self.client_id])
        if self.client_id not in survivors:
            self._refuse(request.round_id, "self_not_listed", [self.client_id])
        if len(survivors) < self.config.min_survivors:
            self._refuse(request.round_id, "too_few_survivors", [len(survivors)])
        out: list[tuple[int, ShareKind, Share]] = []
        for owner in sorted(self._held):
            b_share, p_share = self._held[owner]
            if owner in survivors:
                out.append((owner, ShareKind.SELF_MASK, b_share))
            elif owner in dropped:
                out.append((owner, ShareKind.PAIR_KEY, p_share))
        self.state = ClientState.DONE
        return UnmaskResponse(request.round_id, self.client_id, tuple(out)).to_bytes()

    def _refuse(self, round_id: int, why: str, ids: Sequence[int]) -> None:
        self.state = ClientState.DONE  # one refused request ends this client's round
        self.events.append(
            SecAggEvent(
                "secagg_unmask_refused",
                {
                    "round": round_id,
                    "client": self.client_id,
                    "reason": why,
                    "ids": ",".join(map(str, ids)),
                },
            )
        )
        raise UnmaskRefusedError(f"unmasking request refused: {why} {list(ids)}")

    def _expect(self, state: ClientState) -> None:
        if self.state is not state:
            raise SecAggStateError(f"client is {self.state.value}, expected {state.value}")

    def _check_round(self, round_id: int) -> None:
        if round_id != self.config.round_id:
            raise WrongRoundError(f"message of round {round_id}, this is {self.config.round_id}")

    def _check_peer_message(self, round_id: int, sender: int, seen: Mapping[int, object]) -> None:
        self._check_round(round_id)
        if sender not in self.neighbours or sender not in self._peers:
            raise UnexpectedSenderError(f"client {sender} is not a neighbour of {self.client_id}")
        if sender in seen:
            raise ReplayedMessageError(f"second message from {sender} in this stage")


def _verify_advert(advert: Advert, key: VerifyKey, graph_seed: bytes | None) -> None:
    """Under the context its kind says: made ahead, or bound to the round's graph seed."""
    context = _advert_context(advert.round_id, advert.sender, None if advert.ahead else graph_seed)
    try:
        key.verify(advert.signature, advert.signed_part(), context)
    except SignatureError:
        raise ForgedMessageError(f"advert of {advert.sender} not signed by it") from None


# --- server -----------------------------------------------------------------------------------


class ServerState(enum.Enum):
    ADVERTS = "adverts"
    KEY_SHARES = "key_shares"
    INPUTS = "inputs"
    UNMASKING = "unmasking"
    DONE = "done"


@dataclass
class _Collected:
    adverts: dict[int, Advert] = field(default_factory=dict)
    advert_bytes: dict[int, bytes] = field(default_factory=dict)
    key_shares: dict[int, KeyShares] = field(default_factory=dict)
    inputs: dict[int, U64Vector] = field(default_factory=dict)
    # partial sums folded by crypto workers: the server never sees these clients one by one
    summed: set[int] = field(default_factory=set)
    sums: list[U64Vector] = field(default_factory=list)
    responses: dict[int, UnmaskResponse] = field(default_factory=dict)


class SecAggServer:
    """The coordinator's side of one round: it checks and routes what clients send, and in the
    end learns only the sum. Each close_* returns what to send to whom (client id -> bytes),
    or RoundAborted when fewer than min_survivors remain."""

    def __init__(self, config: RoundConfig, verify_keys: Mapping[int, VerifyKey]) -> None:
        self.config = config
        self.state = ServerState.ADVERTS
        self._keys = verify_keys
        self._graph = neighbour_graph(config.participants, config.degree, config.graph_seed)
        self._c = _Collected()
        # owner -> who holds its shares, i.e. the neighbours it masks with
        self._holders: dict[int, frozenset[int]] = {}
        # dropped owner -> its pair-key seed shares so far, and its pair seeds once rebuilt
        self._pair_shares: dict[int, list[Share]] = {}
        self._rebuilt: dict[int, list[tuple[int, bytes]]] = {}
        self._survivors: tuple[int, ...] = ()
        self._dropped: tuple[int, ...] = ()

    # round 0
    def receive_advert(self, sender: int, data: bytes, *, ahead: bool = False) -> None:
        """`ahead`: the round opens with adverts made ahead of it (pipelined); otherwise
        only adverts made for this announcement (bound to its graph seed) are taken, so that
        a stale advert made ahead, still queued, cannot stand in for a fresh one."""
        self._expect(ServerState.ADVERTS)
        advert = Advert.from_bytes(data)
        self._check(advert.round_id, sender, advert.sender, self._c.adverts)
        if advert.ahead != ahead:
            kind = "made ahead" if advert.ahead else "made for a full setup"
            raise WrongRoundError(f"advert of {sender} {kind}: not this opening's kind")
        _verify_advert(advert, self._keys[sender], self.config.graph_seed)
        self._c.adverts[sender] = advert
        self._c.advert_bytes[sender] = bytes(data)

    def close_adverts(self) -> dict[int, bytes] | RoundAborted:
        self._expect(ServerState.ADVERTS)
        present = set(self._c.adverts)
        if len(present) < self.config.min_survivors:
            return self._abort("adverts", "too_few_clients", f"{len(present)} adverts")
        self.state = ServerState.KEY_SHARES
        rid = self.config.round_id
        return {
            u: encode_bundle(
                rid, [self._c.advert_bytes[v] for v in sorted(self._graph[u] & present)]
            )
            for u in sorted(present)
        }

    # round 1
    def receive_key_shares(self, sender: int, data: bytes) -> None:
        self._expect(ServerState.KEY_SHARES)
        msg = KeyShares.from_bytes(data)
        self._check(msg.round_id, sender, msg.sender, self._c.key_shares)
        if sender not in self._c.adverts:
            raise UnexpectedSenderError(f"client {sender} sent no advert")
        for e in msg.entries:
            if e.recipient not in self._graph[sender] or e.recipient not in self._c.adverts:
                raise UnexpectedSenderError(f"client {sender} may not share with {e.recipient}")
        if len(msg.entries) < self.config.threshold:
            raise MalformedMessageError(f"client {sender} shared with fewer than t neighbours")
        signed = digest_list_bytes(msg.round_id, sender, msg.digests())
        context = _key_shares_context(msg.round_id, sender, self.config.graph_seed)
        try:
            self._keys[sender].verify(msg.signature, signed, context)
        except SignatureError:
            raise ForgedMessageError(f"keys and shares of {sender} not signed by it") from None
        self._c.key_shares[sender] = msg

    def close_key_shares(self) -> dict[int, bytes] | RoundAborted:
        """Each entry to its recipient when both sides of the pair addressed each other (the
        pairs that will mask); abort if fewer than min_survivors took part."""
        self._expect(ServerState.KEY_SHARES)
        present = self._c.key_shares
        if len(present) < self.config.min_survivors:
            return self._abort("key_shares", "too_few_clients", f"{len(present)} sent keys")
        rid = self.config.round_id
        addressed = {u: {e.recipient for e in msg.entries} for u, msg in present.items()}
        out: dict[int, list[bytes]] = {u: [] for u in sorted(present)}
        for u, msg in sorted(present.items()):
            digests = msg.digests()
            mutual = []
            for e in msg.entries:
                v = e.recipient
                if v in present and u in addressed[v]:
                    out[v].append(ForwardedKeyShares(rid, u, e, digests, msg.signature).to_bytes())
                    mutual.append(v)
            self._holders[u] = frozenset(mutual)
        self.state = ServerState.INPUTS
        return {u: encode_bundle(rid, items) for u, items in out.items()}

    # round 2
    def receive_masked_input(self, sender: int, data: bytes) -> None:
        self._expect(ServerState.INPUTS)
        msg = MaskedInput.from_bytes(data)
        self._check(msg.round_id, sender, msg.sender, self._c.inputs)
        if sender in self._c.summed:
            raise ReplayedMessageError(f"input of client {sender} counted already")
        if sender not in self._c.key_shares:
            raise UnexpectedSenderError(f"client {sender} sent no shares")
        enc = self.config.encoding
        if (msg.modulus_bits, msg.dimension) != (enc.modulus_bits, enc.dimension):
            raise MalformedMessageError(
                f"input of {sender}: {msg.dimension} values mod 2^{msg.modulus_bits}, "
                f"expected {enc.dimension} mod 2^{enc.modulus_bits}"
            )
        dtype = "<u4" if word_bytes(msg.modulus_bits) == 4 else "<u8"
        vector = np.frombuffer(msg.vector, dtype=dtype).astype(np.uint64)
        if np.any(vector > _ring_mask(self.config)):
            raise MalformedMessageError(f"input of {sender} holds values over 2^k")
        self._c.inputs[sender] = vector

    def receive_masked_sum(self, senders: Sequence[int], total: U64Vector) -> None:
        """A partial sum, modulo 2^k, of the masked inputs of `senders` (each opened and
        checked by a crypto worker with `open_masked_input`). All or nothing: any sender that
        is unknown, sent no shares or is already counted refuses the whole partial."""
        self._expect(ServerState.INPUTS)
        enc = self.config.encoding
        vector = np.asarray(total)
        if vector.dtype != np.uint64 or vector.shape != (enc.dimension,):
            raise MalformedMessageError(f"partial sum is not {enc.dimension} u64 values")
        if np.any(vector > _ring_mask(self.config)):
            raise MalformedMessageError("partial sum holds values over 2^k")
        ids = list(senders)
        if not ids or len(set(ids)) != len(ids):
            raise MalformedMessageError(f"partial sum of senders {ids}: empty or repeated")
        for u in ids:
            if u not in self._c.key_shares:
                raise UnexpectedSenderError(f"client {u} sent no shares")
            if u in self._c.inputs or u in self._c.summed:
                raise ReplayedMessageError(f"input of client {u} counted already")
        self._c.summed.update(ids)
        self._c.sums.append(vector.copy())

    def close_inputs(self) -> bytes | RoundAborted:
        """The one unmasking request, for every survivor (see `survivors`)."""
        self._expect(ServerState.INPUTS)
        survivors = tuple(sorted(set(self._c.inputs) | self._c.summed))
        if len(survivors) < self.config.min_survivors:
            return self._abort("inputs", "too_few_survivors", f"{len(survivors)} inputs")
        self._survivors = survivors
        self._dropped = tuple(sorted(set(self._c.key_shares) - set(survivors)))
        self.state = ServerState.UNMASKING
        return UnmaskRequest(self.config.round_id, survivors, self._dropped).to_bytes()

    @property
    def heard(self) -> int:
        """How many clients the open stage has heard from (for a transport to stop waiting)."""
        c = self._c
        return {
            ServerState.ADVERTS: len(c.adverts),
            ServerState.KEY_SHARES: len(c.key_shares),
            ServerState.INPUTS: len(c.inputs) + len(c.summed),
            ServerState.UNMASKING: len(c.responses),
        }.get(self.state, 0)

    @property
    def awaited(self) -> int:
        """How many clients the open stage can hear from at most: those left in the round."""
        c = self._c
        return {
            ServerState.ADVERTS: len(self.config.participants),
            ServerState.KEY_SHARES: len(c.adverts),
            ServerState.INPUTS: len(c.key_shares),
            ServerState.UNMASKING: len(self._survivors),
        }.get(self.state, 0)

    @property
    def survivors(self) -> tuple[int, ...]:
        return self._survivors

    @property
    def dropped(self) -> tuple[int, ...]:
        return self._dropped

    # round 3
    def receive_unmask_response(self, sender: int, data: bytes) -> None:
        self._expect(ServerState.UNMASKING)
        msg = UnmaskResponse.from_bytes(data)
        self._check(msg.round_id, sender, msg.sender, self._c.responses)
        if sender not in self._survivors:
            raise UnexpectedSenderError(f"client {sender} is not a survivor")
        survivors, dropped = set(self._survivors), set(self._dropped)
        for owner, kind, share in msg.shares:
            wanted = ShareKind.SELF_MASK if owner in survivors else ShareKind.PAIR_KEY
            if (owner not in survivors and owner not in dropped) or kind is not wanted:
                raise MalformedMessageError(f"response of {sender}: unrequested share of {owner}")
            if sender not in self._holders[owner]:
                raise UnexpectedSenderError(f"client {sender} holds no share of {owner}")
            if share.index != sender:
                raise ForgedMessageError(f"response of {sender}: share at index {share.index}")
        self._c.responses[sender] = msg
        for owner, kind, share in msg.shares:
            if kind is ShareKind.PAIR_KEY and owner not in self._rebuilt:
                self._pair_shares.setdefault(owner, []).append(share)
                if len(self._pair_shares[owner]) == self.config.threshold:
                    self._rebuild_early(owner)

    def finish(self) -> AggregateResult | RoundAborted:
        """Recover the seeds, remove every mask, return the exact sum; or abort if some seed
        has fewer than t shares or does not match its owner's commitment."""
        self._expect(ServerState.UNMASKING)
        self.state = ServerState.DONE
        config, rid, t = self.config, self.config.round_id, self.config.threshold
        collected: dict[tuple[int, ShareKind], list[Share]] = {}
        for msg in self._c.responses.values():
            for owner, kind, share in msg.shares:
                collected.setdefault((owner, kind), []).append(share)
        seeds: dict[tuple[int, ShareKind], bytes] = {}
        wanted = [(u, ShareKind.SELF_MASK) for u in self._survivors]
        wanted += [(u, ShareKind.PAIR_KEY) for u in self._dropped if u not in self._rebuilt]
        for owner, kind in wanted:
            try:
                # in index order, so that owners with the same holders share Lagrange weights
                held = sorted(collected.get((owner, kind), []), key=lambda share: share.index)
                seed = recover_secret(held, t)
            except NotEnoughSharesError as exc:
                return self._abort("unmask", "too_few_shares", f"client {owner}: {exc}")
            except InvalidShareError as exc:
                return self._abort("unmask", "bad_share", f"client {owner}: {exc}")
            advert = self._c.adverts[owner]
            label, committed = (
                (b"self", advert.self_commitment)
                if kind is ShareKind.SELF_MASK
                else (b"pair", advert.pair_commitment)
            )
            if _commitment(label, rid, owner, seed) != committed:
                return self._abort("unmask", "bad_share", f"client {owner}: seed not committed")
            seeds[(owner, kind)] = seed
        total = np.zeros(config.encoding.dimension, dtype=np.uint64)
        for partial in self._c.sums:
            total += partial
        for u in self._survivors:
            if u in self._c.inputs:
                total += self._c.inputs[u]
        bits = config.encoding.modulus_bits
        self_seeds = [seeds[(u, ShareKind.SELF_MASK)] for u in self._survivors]
        accumulate_masks(
            total,
            self_seeds,
            [-1] * len(self_seeds),
            round_id=rid,
            purpose=b"self",
            modulus_bits=bits,
        )
        pair_seeds: list[bytes] = []
        pair_signs: list[int] = []
        for u in self._dropped:
            rebuilt = (
                self._rebuilt[u]
                if u in self._rebuilt
                else self._pair_seeds_of_dropped(u, seeds[(u, ShareKind.PAIR_KEY)])
            )
            if isinstance(rebuilt, tuple):
                return self._abort("unmask", *rebuilt)
            for v, mask_seed in rebuilt:
                pair_seeds.append(mask_seed)
                # v added +mask if u > v, -mask if u < v: take it back out
                pair_signs.append(-1 if u > v else 1)
        # all orphaned pair masks in one C call (hundreds of them at 50 gateways)
        accumulate_masks(
            total, pair_seeds, pair_signs, round_id=rid, purpose=b"pair", modulus_bits=bits
        )
        total &= _ring_mask(config)
        return AggregateResult(rid, total, self._survivors, self._dropped, config.encoding)

    def _pair_seeds_of_dropped(
        self, u: int, pair_key_seed: bytes
    ) -> list[tuple[int, bytes]] | tuple[str, str]:
        """The seeds dropped client u shares with its surviving mask partners: its own halves
        from its escrow, theirs by decapsulating what they sent it with its mask key, rebuilt
        from the recovered pair-key seed and checked against the advertised public key; or
        (reason, detail) of the failure."""
        rid = self.config.round_id
        mask_kem = _mask_key(pair_key_seed, rid, u)
        if mask_kem.public_key().raw != self._c.adverts[u].mask_key:
            return "bad_share", f"client {u}: mask key not advertised"
        own = {e.recipient: e for e in self._c.key_shares[u].entries}
        out: list[tuple[int, bytes]] = []
        for v in sorted(self._holders[u] & set(self._survivors)):
            key = _escrow_key(pair_key_seed, rid, u, v)
            try:
                mine = decrypt(key, _ZERO_NONCE, _escrow_ad(rid, u, v), own[v].escrow)
            except AuthenticationError:
                return "bad_escrow", f"escrow of {u} for {v}"
            theirs_entry = next(e for e in self._c.key_shares[v].entries if e.recipient == u)
            try:
                shared = mask_kem.decapsulate(theirs_entry.mask_ciphertext)
            except DecodeError:
                return "bad_escrow", f"mask ciphertext of {v} for {u}"
            theirs = _mask_half(shared, rid, v, u, theirs_entry.mask_ciphertext)
            halves = (mine, theirs) if u < v else (theirs, mine)
            out.append((v, _pair_seed(rid, min(u, v), max(u, v), *halves)))
        return out

    def _rebuild_early(self, owner: int) -> None:
        """A dropped client's pair seeds as soon as t shares of its pair-key seed are in,
        while the server still waits for the other survivors' answers: the decapsulations
        leave the recovery step's critical path. Any failure here is left to `finish`, which
        tries again with every share and aborts if it must."""
        t, rid = self.config.threshold, self.config.round_id
        held = sorted(self._pair_shares.get(owner, []), key=lambda share: share.index)
        try:
            seed = recover_secret(held, t)
        except (NotEnoughSharesError, InvalidShareError):
            return
        if _commitment(b"pair", rid, owner, seed) != self._c.adverts[owner].pair_commitment:
            return
        rebuilt = self._pair_seeds_of_dropped(owner, seed)
        if isinstance(rebuilt, list):
            self._rebuilt[owner] = rebuilt

    def _abort(self, stage: str, reason: str, detail: str) -> RoundAborted:
        self.state = ServerState.DONE
        return RoundAborted(self.config.round_id, stage, reason, detail)

    def _expect(self, state: ServerState) -> None:
        if self.state is not state:
            raise SecAggStateError(f"server is {self.state.value}, expected {state.value}")

    def _check(
        self, round_id: int, transport_sender: int, claimed: int, seen: Mapping[int, object]
    ) -> None:
        if round_id != self.config.round_id:
            raise WrongRoundError(f"message of round {round_id}, this is {self.config.round_id}")
        if claimed != transport_sender:
            raise UnexpectedSenderError(f"message from {transport_sender} claims to be {claimed}")
        if transport_sender not in self._graph or transport_sender not in self._keys:
            raise UnexpectedSenderError(f"client {transport_sender} is not a participant")
        if transport_sender in seen:
            raise ReplayedMessageError(f"second message from {transport_sender} in this stage")
