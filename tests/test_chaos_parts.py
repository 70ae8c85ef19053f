"""The fault suite's own parts against a real RabbitMQ: the pausable proxy cuts and heals a
link, a short gateway cut mid-round loses and double-counts no update, and the soak's slope
is the fit it claims to be."""

from __future__ import annotations

from pathlib import Path

import pika
import pytest
from pika.exceptions import AMQPConnectionError, AMQPError

from bench.chaos_amqp import run_amqp_fault
from bench.soak import slope_per_minute
from testbed import RabbitMQ
from testbed.tcp_proxy import PausableProxy


def _connect(port: int, vhost_url: str) -> pika.BlockingConnection:
    vhost = vhost_url.rsplit("/", 1)[1]
    params = pika.URLParameters(f"amqp://guest:guest@127.0.0.1:{port}/{vhost}")
    params.connection_attempts = 1
    params.socket_timeout = 5
    return pika.BlockingConnection(params)


def test_proxy_cuts_and_heals_the_link(rabbitmq: RabbitMQ, vhost: str) -> None:
    with PausableProxy(rabbitmq.amqp_port) as proxy:
        conn = _connect(proxy.port, vhost)
        channel = conn.channel()
        channel.queue_declare("probe", durable=True)
        assert proxy.connections == 1
        proxy.cut()
        with pytest.raises(AMQPError):  # the carried connection is reset
            channel.queue_declare("probe", durable=True)
        with pytest.raises(AMQPConnectionError):
            _connect(proxy.port, vhost)
        assert proxy.refused == 1
        proxy.heal()
        healed = _connect(proxy.port, vhost)
        assert healed.channel().queue_declare("probe", durable=True).method.queue == "probe"
        healed.close()
        assert proxy.connections == 2


# A private RabbitMQ node's start and three paced rounds around the cut: about two minutes on a
# quiet machine, more than the default per-test limit on a loaded one.
@pytest.mark.timeout(900)
def test_gateway_cut_mid_round_loses_and_double_counts_nothing(
    tmp_path: Path, rabbitmq: RabbitMQ
) -> None:
    row = run_amqp_fault(
        "gateway_cut_from_rabbitmq", 3.0, tmp_path, rabbitmq, pace=0.2, workers=1, rounds_around=1
    )
    assert row.updates_sent >= 3 * 3  # a round before the cut, the stalled one, one after
    assert row.updates_lost == 0
    assert row.updates_double_counted == 0
    assert row.updates_counted == row.updates_sent
    assert row.recover_seconds is not None


def test_soak_slope_is_per_minute_over_the_second_half() -> None:
    t = [0.0, 10.0, 20.0, 30.0, 40.0, 50.0]
    # The first half climbs (start-up); the second half grows 2 units per 10 s = 12 a minute.
    y = [0.0, 500.0, 900.0, 1000.0, 1002.0, 1004.0]
    assert slope_per_minute(t, y) == pytest.approx(12.0)
    assert slope_per_minute(t, [7.0] * 6) == pytest.approx(0.0, abs=1e-9)
    assert slope_per_minute([1.0], [3.0]) == 0.0
