"""The federated aggregator: round coordinator and crypto workers over RabbitMQ."""
