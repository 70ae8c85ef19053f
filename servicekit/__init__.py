"""servicekit: the plumbing the two daemons and the emulator CLI share.

Config loading and its error, CLI exit codes and key commands, structured logs, the metrics
server, systemd notify, reconnect backoff, the MQTT clients' TLS; it imports nothing of
ours but pqlink and wire."""
