"""The gateway daemon: post-quantum MQTT session termination, local vitals store, systemd glue."""
