"""The gateway's one exception root: each of its failures derives from GatewayError and says
what went wrong; configuration errors are servicekit's ConfigError."""

from __future__ import annotations


class GatewayError(Exception):
    """Base class of every error the gateway raises itself."""
