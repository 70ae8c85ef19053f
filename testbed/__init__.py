"""testbed: private instances of the real brokers (mosquitto, RabbitMQ) on free loopback ports.

The demo, the benchmarks and the tests' fixtures start them; nothing here is a mock."""

from testbed.mosquitto import Mosquitto
from testbed.process import ServiceError, free_port, require_binary, wait_for_port
from testbed.rabbitmq import RabbitMQ

__all__ = ["Mosquitto", "RabbitMQ", "ServiceError", "free_port", "require_binary", "wait_for_port"]
