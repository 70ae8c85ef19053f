"""Shared fixtures: identities are generated once per test session."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from pqlink import Identity, Registry, Role, SigAlg
from testbed import Mosquitto, RabbitMQ


@dataclass(frozen=True)
class Parties:
    sensor: Identity
    sensor65: Identity
    gateway: Identity
    other_gateway: Identity
    aggregator: Identity
    stranger: Identity

    def sensor_registry(self) -> Registry:
        reg = Registry()
        reg.enroll(self.sensor.public)
        reg.enroll(self.sensor65.public)
        return reg

    def gateway_registry(self) -> Registry:
        reg = Registry()
        reg.enroll(self.gateway.public)
        reg.enroll(self.other_gateway.public)
        return reg

    def aggregator_registry(self) -> Registry:
        """The senders a gateway accepts global models from."""
        reg = Registry()
        reg.enroll(self.aggregator.public)
        return reg


@pytest.fixture(scope="session")
def parties() -> Parties:
    return Parties(
        sensor=Identity.generate("wearable-0001", Role.SENSOR, SigAlg.ML_DSA_44),
        sensor65=Identity.generate("wearable-0002", Role.SENSOR, SigAlg.ML_DSA_65),
        gateway=Identity.generate("gw-01", Role.GATEWAY),
        other_gateway=Identity.generate("gw-02", Role.GATEWAY),
        aggregator=Identity.generate("aggregator", Role.AGGREGATOR),
        stranger=Identity.generate("wearable-0001", Role.SENSOR, SigAlg.ML_DSA_44),
    )


@pytest.fixture
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """A private mosquitto on a free port, stopped after the test."""
    broker = Mosquitto(tmp_path_factory.mktemp("mosquitto"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def rabbitmq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMQ]:
    """One private RabbitMQ node for the whole test session (it takes seconds to start)."""
    node = RabbitMQ(tmp_path_factory.mktemp("rabbitmq"))
    node.start()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture
def vhost(rabbitmq: RabbitMQ) -> Iterator[str]:
    """A fresh virtual host: each test gets its own queues on the session's node."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    rabbitmq.ctl("add_vhost", name)
    rabbitmq.ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    yield f"amqp://guest:guest@127.0.0.1:{rabbitmq.amqp_port}/{name}"
    rabbitmq.ctl("delete_vhost", name)
