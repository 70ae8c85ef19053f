"""Drives one secure-aggregation round between in-memory clients and a server, passing every
message as bytes exactly as a transport would, with dropouts at a chosen stage."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from functools import cache

import numpy as np

from pqlink import Identity, Registry, Role
from pqlink._secagg_codec import KeyShares, digest_list_bytes
from pqlink.keys import SigAlg, SigningKey, VerifyKey
from pqlink.secagg import (
    AggregateResult,
    InputEncoding,
    RoundAborted,
    RoundConfig,
    SecAggClient,
    SecAggServer,
    _key_shares_context,
    choose_parameters,
    decode_bundle,
    modulus_bits_for,
)


def enrolled_parties(gateways: int = 3) -> tuple[Identity, list[Identity], Registry]:
    """An aggregator identity, `gateways` gateway identities (gw0, gw1, ...) and a registry
    enrolling every gateway: the parties of a secure round over sealed frames."""
    agg = Identity.generate("aggregator", Role.AGGREGATOR)
    gws = [Identity.generate(f"gw{i}", Role.GATEWAY) for i in range(gateways)]
    registry = Registry()
    for gw in gws:
        registry.enroll(gw.public)
    return agg, gws, registry


@cache
def identity(client_id: int) -> SigningKey:
    """A deterministic ML-DSA-65 identity per id, so repeated tests do not pay key generation."""
    seed = hashlib.sha256(b"secagg test identity %d" % client_id).digest()
    return SigningKey(SigAlg.ML_DSA_65, seed)


def verify_keys(ids: tuple[int, ...]) -> dict[int, VerifyKey]:
    return {u: identity(u).public_key() for u in ids}


def resigned(msg: KeyShares, graph_seed: bytes = b"\x42" * 32) -> bytes:
    """A keys-and-shares message signed by its own sender again (as `make_config`'s round):
    what a malicious sender can produce."""
    signed = digest_list_bytes(msg.round_id, msg.sender, msg.digests())
    context = _key_shares_context(msg.round_id, msg.sender, graph_seed)
    signature = identity(msg.sender).sign(signed, context)
    return dataclasses.replace(msg, signature=signature).to_bytes()


def make_config(
    n: int,
    *,
    round_id: int = 7,
    dimension: int = 64,
    precision_bits: int = 12,
    degree: int | None = None,
    threshold: int | None = None,
    min_survivors: int | None = None,
    dropout_fraction: float = 0.2,
    noise_std: float = 0.0,
    seed: bytes = b"\x42" * 32,
) -> RoundConfig:
    ids = tuple(range(1, n + 1))
    params = choose_parameters(n, corrupt_fraction=0.0, dropout_fraction=dropout_fraction)
    k = params.degree if degree is None else degree
    t = params.threshold if threshold is None else threshold
    bits = modulus_bits_for(n, precision_bits, noise_std=noise_std, dimension=dimension)
    encoding = InputEncoding(dimension, 1.0, precision_bits, bits, noise_std)
    return RoundConfig(
        round_id, seed, ids, k, t, t + 1 if min_survivors is None else min_survivors, encoding
    )


@dataclass
class Round:
    config: RoundConfig
    server: SecAggServer
    clients: dict[int, SecAggClient]
    request: bytes = b""
    log: list[str] = field(default_factory=list)


def start(config: RoundConfig) -> Round:
    keys = verify_keys(config.participants)
    server = SecAggServer(config, keys)
    clients = {u: SecAggClient(config, u, identity(u), keys) for u in config.participants}
    return Round(config, server, clients)


def deliver(bundles: dict[int, bytes], receive: dict[int, object]) -> None:
    for u, bundle in bundles.items():
        _, items = decode_bundle(bundle)
        for item in items:
            receive[u](item)  # type: ignore[operator]


def through_adverts(r: Round, *, absent: frozenset[int] = frozenset()) -> list[int]:
    """Round 0 for every client not in `absent`: adverts in, bundles delivered; those clients."""
    live = [u for u in r.config.participants if u not in absent]
    for u in live:
        r.server.receive_advert(u, r.clients[u].advertise())
    bundles = r.server.close_adverts()
    assert not isinstance(bundles, RoundAborted), bundles
    deliver(bundles, {u: r.clients[u].receive_advert for u in live})
    return live


def through_shares(r: Round, *, absent: frozenset[int] = frozenset()) -> None:
    """Rounds 0-1 for every client not in `absent`."""
    live = through_adverts(r, absent=absent)
    for u in live:
        r.server.receive_key_shares(u, r.clients[u].key_shares())
    bundles = r.server.close_key_shares()
    assert not isinstance(bundles, RoundAborted), bundles
    deliver(bundles, {u: r.clients[u].receive_key_shares for u in live})


def finish(
    r: Round, inputs: dict[int, np.ndarray], *, dropped: frozenset[int] = frozenset()
) -> AggregateResult | RoundAborted:
    """Rounds 2-3: clients in `dropped` vanish after sharing keys."""
    for u, x in inputs.items():
        if u not in dropped:
            r.server.receive_masked_input(u, r.clients[u].masked_input(x))
    request = r.server.close_inputs()
    if isinstance(request, RoundAborted):
        return request
    r.request = request
    for u in r.server.survivors:
        r.server.receive_unmask_response(u, r.clients[u].unmask(request))
    return r.server.finish()


def random_inputs(
    config: RoundConfig, rng: np.random.Generator
) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Per client: the encoded ring vector, and the signed integers it encodes."""
    enc = config.encoding
    ring, plain = {}, {}
    for u in config.participants:
        update = rng.normal(0.0, 0.5, enc.dimension)
        q = enc.quantise(update, rng) + enc.noise(rng)
        plain[u] = q
        ring[u] = enc.to_ring(q)
    return ring, plain
