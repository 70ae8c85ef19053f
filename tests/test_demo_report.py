"""The demo's round table: a plain round's gateway-side figures as numbers, a secure round's
as dashes with a line saying why (its coordinator learns only the sum)."""

from __future__ import annotations

from typing import Any

from demo.report import RoundRow, round_line, table


def _row(round_: int, *, gateway_side: bool) -> RoundRow:
    return RoundRow(
        round=round_,
        participants=3,
        windows=300 if gateway_side else 0,
        accuracy=0.812,
        loss=0.5,
        redistribution_ms=1.5,
        window_ms=2.5,
        training_ms=30.25,
        sealing_ms=1.25,
        transport_ms=4.0,
        opening_ms=0.75,
        aggregation_ms=35.0,
        other_ms=100.0,
        round_ms=175.0,
        update_bytes=9010,
        energy_j=0.125,
        gateway_side=gateway_side,
    )


def test_plain_rows_show_every_figure_and_no_note() -> None:
    text = table([_row(1, gateway_side=True)], 0.9)
    line = text.splitlines()[3].split()
    assert line == [
        "1", "3", "300", "0.812", "1.5", "2.5", "30.2", "1.2", "4.0", "0.8", "35.0",
        "100.0", "175.0", "9010", "0.125",
    ]  # fmt: skip
    assert "learns only the sum" not in text
    assert text.splitlines()[-1] == "centrally trained model on the pooled data: accuracy 0.900"


def test_secure_rows_show_dashes_where_only_gateways_know() -> None:
    text = table([_row(1, gateway_side=True), _row(2, gateway_side=False)], 0.9)
    lines = text.splitlines()
    secure = lines[4].split()
    # round, gateways, accuracy, aggregation, other and round time are the coordinator's own
    assert secure == [
        "2", "3", "-", "0.812", "-", "-", "-", "-", "-", "-", "35.0", "100.0", "175.0", "-", "-",
    ]  # fmt: skip
    assert lines[3].split()[2] == "300"
    assert lines[5].startswith("-: a secure round's coordinator learns only the sum")
    # every row as wide as the header: the dashes keep the columns aligned
    assert len(lines[4]) == len(lines[3]) == len(lines[0])


def _entry(secure: bool, epsilon: float | None) -> dict[str, Any]:
    privacy: dict[str, Any] = {
        "secure_aggregation": secure,
        "dropouts_recovered": 2 if secure else 0,
    }
    if epsilon is not None:
        privacy.update(epsilon=epsilon, delta=1e-5)
    return {
        "round": 4,
        "reason": "quorum",
        "participants": ["gw-01", "gw-02", "gw-03"],
        "samples": 0 if secure else 612,
        "version": 4,
        "privacy": privacy,
    }


def test_round_line_says_a_secure_round_hides_its_window_count() -> None:
    assert round_line(_entry(True, 25.94)) == (
        "round 4 closed (quorum): 3 gateways, windows not revealed, model v4; "
        "secure, 2 dropouts recovered, epsilon 25.9 at delta 1e-05"
    )


def test_round_line_of_a_plain_round_without_dp() -> None:
    assert round_line(_entry(False, None)) == (
        "round 4 closed (quorum): 3 gateways, 612 windows, model v4; "
        "plain, 0 dropouts recovered, no DP"
    )
