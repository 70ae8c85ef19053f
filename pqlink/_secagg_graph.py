"""Secure aggregation's neighbour graph and its (degree, threshold) choice, after SecAgg+.

Complete for small rounds; otherwise a Harary graph on a ring shuffled by a public seed."""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from pqlink._errors import LocalProtocolError
from pqlink.ascon import cxof128

#: Up to this many clients everyone is everyone's neighbour (SecAgg); above, SecAgg+.
COMPLETE_GRAPH_UP_TO = 16
_GRAPH_CUSTOMIZATION = b"iomt-secagg graph v1"


class SecAggParameterError(LocalProtocolError):
    """No (degree, threshold) meets the requested security and correctness, or a bad value."""


@dataclass(frozen=True, slots=True)
class GraphParameters:
    """The neighbour degree k and the Shamir threshold t, with the bounds that justify them.

    `privacy_failure` bounds the probability that the adversary can unmask some honest client
    (log2, at most -sigma); `correctness_failure` that some survivor's neighbourhood holds
    fewer than t survivors (log2, at most -eta)."""

    clients: int
    degree: int
    threshold: int
    complete: bool
    privacy_failure_log2: float
    correctness_failure_log2: float


def _hypergeometric_tail(population: int, marked: int, draws: int, at_least: int) -> float:
    """P[X >= at_least] for X the marked items among `draws` taken without replacement."""
    if at_least <= 0:
        return 1.0
    if at_least > min(marked, draws):
        return 0.0
    total = math.comb(population, draws)
    hits = sum(
        math.comb(marked, i) * math.comb(population - marked, draws - i)
        for i in range(at_least, min(marked, draws) + 1)
    )
    return hits / total  # int / int is correctly rounded, whatever the size


def _log2(p: float) -> float:
    return -math.inf if p <= 0.0 else math.log2(p)


def choose_parameters(
    clients: int,
    *,
    corrupt_fraction: float,
    dropout_fraction: float,
    sigma: int = 40,
    eta: int = 30,
) -> GraphParameters:
    """The smallest degree, and with it the smallest threshold, that meets both bounds.

    Adversary: the server and up to `corrupt_fraction` of the clients; up to
    `dropout_fraction` drop out. Privacy needs, for every honest u, fewer than 2t - k corrupt
    neighbours (honest neighbours hand out one kind of share per gateway, so the adversary
    cannot hold t of both) and an honest-survivor subgraph that stays connected (a Harary
    graph needs k/2 consecutive ring positions removed twice); correctness needs at least t
    surviving neighbours around every client. Union bounds over the n clients."""
    if clients < 2:
        raise SecAggParameterError(f"secure aggregation needs at least 2 clients, got {clients}")
    if not (0.0 <= corrupt_fraction < 1.0 and 0.0 <= dropout_fraction < 1.0):
        raise SecAggParameterError("corrupt and dropout fractions must lie in [0, 1)")
    corrupt = math.floor(corrupt_fraction * clients)
    dropped = math.floor(dropout_fraction * clients)
    if clients <= COMPLETE_GRAPH_UP_TO:
        k = clients - 1
        t = (k + corrupt) // 2 + 1
        if t > k - dropped or t < 1:
            raise SecAggParameterError(
                f"{clients} clients with {corrupt} corrupt and {dropped} dropping out: "
                f"no threshold t with (k + corrupt) / 2 < t <= k - dropouts"
            )
        return GraphParameters(clients, k, t, True, -math.inf, -math.inf)
    removed_fraction = (corrupt + dropped) / clients
    for k in range(2, clients, 2):
        disconnect = clients * removed_fraction ** (k // 2)
        for t in range(k // 2 + 1, k + 1):
            privacy = disconnect + clients * _hypergeometric_tail(
                clients - 1, corrupt, k, 2 * t - k
            )
            if _log2(privacy) > -sigma:
                continue
            correctness = clients * _hypergeometric_tail(clients - 1, dropped, k, k - t + 1)
            if _log2(correctness) > -eta:
                break  # larger t only needs more survivors
            return GraphParameters(clients, k, t, False, _log2(privacy), _log2(correctness))
    # No sparse graph qualifies: fall back to the complete graph with its exact counts.
    k = clients - 1
    t = (k + corrupt) // 2 + 1
    if t > k - dropped:
        raise SecAggParameterError(
            f"{clients} clients, corrupt fraction {corrupt_fraction}, dropout fraction "
            f"{dropout_fraction}: not achievable even with the complete graph"
        )
    return GraphParameters(clients, k, t, True, -math.inf, -math.inf)


def _shuffled(ids: Sequence[int], seed: bytes) -> list[int]:
    """Fisher-Yates driven by Ascon-CXOF128 of the public seed; 64-bit draws reduced modulo
    i + 1 bias each swap by at most n / 2^64."""
    order = sorted(ids)
    stream = cxof128(seed, _GRAPH_CUSTOMIZATION, 8 * len(order))
    for i in range(len(order) - 1, 0, -1):
        (r,) = struct.unpack_from(">Q", stream, 8 * i)
        j = r % (i + 1)
        order[i], order[j] = order[j], order[i]
    return order


def neighbour_graph(ids: Sequence[int], degree: int, seed: bytes) -> dict[int, frozenset[int]]:
    """Each client's neighbours: everyone else when degree >= n - 1, otherwise the Harary
    graph H(k, n) (k/2 ring neighbours on each side) on the ring order the seed shuffles."""
    if len(set(ids)) != len(ids):
        raise SecAggParameterError("client ids must be distinct")
    if len(seed) != 32:
        raise SecAggParameterError(f"graph seed must be 32 bytes, got {len(seed)}")
    n = len(ids)
    if degree >= n - 1:
        everyone = frozenset(ids)
        return {u: everyone - {u} for u in ids}
    if degree < 2 or degree % 2:
        raise SecAggParameterError(f"degree {degree} must be even and at least 2")
    ring = _shuffled(ids, seed)
    half = degree // 2
    return {
        ring[i]: frozenset(ring[(i + d) % n] for d in range(-half, half + 1) if d != 0)
        for i in range(n)
    }
