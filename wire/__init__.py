"""wire: the application contracts shared by wearables, gateways and the aggregator.

Vitals record kinds, MQTT topics, FL payloads with typed round settings, AMQP names, the one
enum of rejection reasons and the model layout; it imports nothing of ours but pqlink."""
