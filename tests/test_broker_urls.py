"""AMQP URL settings listing one or several broker nodes, and the pika parameters made of them."""

from __future__ import annotations

import pytest

from aggregator.worker import broker_parameters
from wire.amqp import broker_urls


def test_one_or_several_nodes() -> None:
    assert broker_urls("amqp://a:5672/%2F") == ["amqp://a:5672/%2F"]
    assert broker_urls(" amqp://a:5672/v , amqp://b:5673/v,amqp://c:5674/v ") == [
        "amqp://a:5672/v",
        "amqp://b:5673/v",
        "amqp://c:5674/v",
    ]
    assert broker_urls("amqp://a/v,,") == ["amqp://a/v"]  # empty items are ignored


@pytest.mark.parametrize("setting", ["", " ", ",", " , "])
def test_no_url_is_an_error(setting: str) -> None:
    with pytest.raises(ValueError, match="no AMQP URL in"):
        broker_urls(setting)


def test_pika_gets_every_node_in_order() -> None:
    params = broker_parameters("amqp://u:p@h1:5672/v,amqp://u:p@h2:5673/v", heartbeat=7)
    assert [(p.host, p.port, p.virtual_host) for p in params] == [
        ("h1", 5672, "v"),
        ("h2", 5673, "v"),
    ]
    assert all(p.heartbeat == 7 and p.connection_attempts == 1 for p in params)
