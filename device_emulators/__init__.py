"""Emulated wearables that speak the real pqlink protocol over MQTT."""
