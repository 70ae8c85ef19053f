"""Secure aggregation's neighbour graph and its (degree, threshold) choice, checked against an
independent computation: SciPy's hypergeometric distribution for the SecAgg+ bounds, a
brute-force search for the smallest parameters, and the documented Fisher-Yates shuffle
redone from the public Ascon-CXOF128 stream; every limit at its exact value."""

from __future__ import annotations

import math
import struct

import pytest
from scipy.stats import hypergeom

from pqlink._secagg_graph import (
    _GRAPH_CUSTOMIZATION,
    COMPLETE_GRAPH_UP_TO,
    GraphParameters,
    SecAggParameterError,
    _hypergeometric_tail,
    choose_parameters,
    neighbour_graph,
)
from pqlink.ascon import cxof128

INF = math.inf
SEED = bytes(range(32))


def _tail(population: int, marked: int, draws: int, at_least: int) -> float:
    """P[X >= at_least], X hypergeometric: SciPy's survival function at at_least - 1."""
    return float(hypergeom.sf(at_least - 1, population, marked, draws))


def _bounds(n: int, corrupt: int, dropped: int, k: int, t: int) -> tuple[float, float]:
    """The SecAgg+ union bounds of docs/secure-aggregation.md for degree k, threshold t."""
    removed = (corrupt + dropped) / n
    privacy = n * removed ** (k // 2) + n * _tail(n - 1, corrupt, k, 2 * t - k)
    correctness = n * _tail(n - 1, dropped, k, k - t + 1)
    return privacy, correctness


def _log2(p: float) -> float:
    return -INF if p <= 0.0 else math.log2(p)


@pytest.mark.parametrize("population", [5, 20, 99])
def test_hypergeometric_tail_is_scipys(population: int) -> None:
    for marked in range(0, population + 1, max(1, population // 7)):
        for draws in range(0, population + 1, max(1, population // 6)):
            top = min(marked, draws)
            assert _hypergeometric_tail(population, marked, draws, 0) == 1.0
            assert _hypergeometric_tail(population, marked, draws, -1) == 1.0
            assert _hypergeometric_tail(population, marked, draws, top + 1) == 0.0
            for at_least in range(1, top + 1):
                ours = _hypergeometric_tail(population, marked, draws, at_least)
                assert ours == pytest.approx(_tail(population, marked, draws, at_least), rel=1e-9)
            if top >= 1:  # at the top: only the all-marked draws
                assert _hypergeometric_tail(population, marked, draws, top) > 0.0


@pytest.mark.parametrize(("n", "c", "d"), [(100, 0.05, 0.1), (200, 0.1, 0.1), (1000, 0.05, 0.1)])
def test_sparse_parameters_are_the_smallest_meeting_both_bounds(n: int, c: float, d: float) -> None:
    corrupt, dropped = math.floor(c * n), math.floor(d * n)
    got = choose_parameters(n, corrupt_fraction=c, dropout_fraction=d)
    assert not got.complete
    assert got.clients == n
    privacy, correctness = _bounds(n, corrupt, dropped, got.degree, got.threshold)
    assert _log2(privacy) <= -40
    assert _log2(correctness) <= -30
    assert got.privacy_failure_log2 == pytest.approx(_log2(privacy), abs=1e-9)
    if math.isfinite(got.correctness_failure_log2):
        assert got.correctness_failure_log2 == pytest.approx(_log2(correctness), abs=1e-9)
    else:
        assert correctness == 0.0
    # nothing smaller qualifies: no smaller even degree, no smaller threshold at this degree
    for k in range(2, got.degree + 1, 2):
        for t in range(k // 2 + 1, k + 1):
            if (k, t) == (got.degree, got.threshold):
                break
            p, q = _bounds(n, corrupt, dropped, k, t)
            assert _log2(p) > -40 or _log2(q) > -30, (k, t)


@pytest.mark.parametrize(
    ("n", "c", "field", "moved"),
    [  # where the bound that decides lies within one bit of its default
        (60, 0.05, "privacy_failure_log2", {"sigma": 41}),
        (200, 0.1, "correctness_failure_log2", {"eta": 31}),
    ],
)
def test_the_bounds_default_to_sigma_40_and_eta_30(
    n: int, c: float, field: str, moved: dict[str, int]
) -> None:
    default = choose_parameters(n, corrupt_fraction=c, dropout_fraction=0.1)
    bound = 40 if field == "privacy_failure_log2" else 30
    assert -bound - 1 < getattr(default, field) <= -bound
    assert default == choose_parameters(
        n, corrupt_fraction=c, dropout_fraction=0.1, sigma=40, eta=30
    )
    assert default != choose_parameters(n, corrupt_fraction=c, dropout_fraction=0.1, **moved)


def test_complete_graph_up_to_its_limit_exactly() -> None:
    n = COMPLETE_GRAPH_UP_TO
    assert choose_parameters(n, corrupt_fraction=0.0, dropout_fraction=0.0) == GraphParameters(
        n, n - 1, n // 2, True, -INF, -INF
    )
    # one more client: the sparse search, which with nobody corrupt or dropping needs degree 2
    assert choose_parameters(n + 1, corrupt_fraction=0.0, dropout_fraction=0.0) == (
        GraphParameters(n + 1, 2, 2, False, -INF, -INF)
    )
    assert choose_parameters(2, corrupt_fraction=0.0, dropout_fraction=0.0) == GraphParameters(
        2, 1, 1, True, -INF, -INF
    )
    with pytest.raises(SecAggParameterError, match=r"^secure aggregation needs at least 2"):
        choose_parameters(1, corrupt_fraction=0.0, dropout_fraction=0.0)


def test_complete_graph_threshold_at_the_dropout_limit() -> None:
    # 10 clients, 2 corrupt: t = (9 + 2) // 2 + 1 = 6; 3 dropping leave exactly 6 neighbours
    assert choose_parameters(10, corrupt_fraction=0.2, dropout_fraction=0.3) == (
        GraphParameters(10, 9, 6, True, -INF, -INF)
    )
    with pytest.raises(SecAggParameterError, match="no threshold t with"):
        choose_parameters(10, corrupt_fraction=0.2, dropout_fraction=0.4)


def test_fallback_to_the_complete_graph_above_its_limit() -> None:
    # 17 clients, 1 corrupt and 1 dropping: no sparse degree meets 2^-40, the complete one does
    assert choose_parameters(17, corrupt_fraction=0.1, dropout_fraction=0.1) == GraphParameters(
        17, 16, 9, True, -INF, -INF
    )
    # 40 clients, 12 corrupt, 16 dropping: t = 26 > 39 - 16 even with everyone as neighbour
    with pytest.raises(SecAggParameterError, match="not achievable even with the complete graph"):
        choose_parameters(40, corrupt_fraction=0.3, dropout_fraction=0.4)
    # 17 clients, 2 corrupt: t = (16 + 2) // 2 + 1 = 10; 6 dropping leave exactly 10, 7 too few
    assert choose_parameters(17, corrupt_fraction=0.12, dropout_fraction=0.36) == (
        GraphParameters(17, 16, 10, True, -INF, -INF)
    )
    with pytest.raises(SecAggParameterError, match="not achievable even with the complete graph"):
        choose_parameters(17, corrupt_fraction=0.12, dropout_fraction=0.42)
    # 12 dropping leave 27 >= t = 26
    assert choose_parameters(40, corrupt_fraction=0.3, dropout_fraction=0.3) == GraphParameters(
        40, 39, 26, True, -INF, -INF
    )


@pytest.mark.parametrize(("c", "d"), [(1.0, 0.0), (0.0, 1.0), (-0.01, 0.0), (0.0, -0.01)])
def test_fractions_must_lie_in_0_to_1(c: float, d: float) -> None:
    with pytest.raises(SecAggParameterError, match=r"^corrupt and dropout fractions must lie"):
        choose_parameters(10, corrupt_fraction=c, dropout_fraction=d)


def test_fractions_just_inside_their_bounds() -> None:
    below_one = math.nextafter(1.0, 0.0)
    assert choose_parameters(10, corrupt_fraction=0.0, dropout_fraction=0.0).threshold == 5
    # taken as fractions; 9 of 10 corrupt or dropping then leave no threshold
    for c, d in ((below_one, 0.0), (0.0, below_one)):
        with pytest.raises(SecAggParameterError, match=r"^10 clients with .* no threshold t"):
            choose_parameters(10, corrupt_fraction=c, dropout_fraction=d)


def _ring(ids: list[int], seed: bytes) -> list[int]:
    """The documented shuffle: Fisher-Yates from the end, the swap index of position i the
    big-endian 64-bit word at 8 i of the CXOF128 stream, reduced modulo i + 1."""
    order = sorted(ids)
    stream = cxof128(seed, _GRAPH_CUSTOMIZATION, 8 * len(order))
    for i in range(len(order) - 1, 0, -1):
        j = struct.unpack(">Q", stream[8 * i : 8 * i + 8])[0] % (i + 1)
        order[i], order[j] = order[j], order[i]
    return order


@pytest.mark.parametrize("n", [5, 20, 101])
def test_harary_graph_on_the_documented_ring(n: int) -> None:
    ids = [3 * i + 1 for i in range(n)]  # ids need not be 1..n
    ring = _ring(ids, SEED)
    for degree in (2, 4):
        if degree >= n - 1:
            continue
        half = degree // 2
        expected = {
            ring[i]: frozenset(ring[(i + d) % n] for d in range(1, half + 1))
            | frozenset(ring[(i - d) % n] for d in range(1, half + 1))
            for i in range(n)
        }
        assert neighbour_graph(ids, degree, SEED) == expected


def test_degree_limits() -> None:
    ids = list(range(1, 11))
    assert all(len(v) == 2 for v in neighbour_graph(ids, 2, SEED).values())
    sparse = neighbour_graph(ids, 8, SEED)  # n - 2: still a Harary graph, 8 of 9 others
    assert all(len(v) == 8 for v in sparse.values())
    complete = neighbour_graph(ids, 9, SEED)  # n - 1: everyone
    assert complete == {u: frozenset(ids) - {u} for u in ids}
    for bad in (0, 1, 3):
        with pytest.raises(SecAggParameterError, match=rf"^degree {bad} must be even"):
            neighbour_graph(ids, bad, SEED)
    with pytest.raises(SecAggParameterError, match=r"^client ids must be distinct$"):
        neighbour_graph([1, 2, 2], 2, SEED)
