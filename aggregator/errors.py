"""The aggregator's one exception root: each of its failures derives from AggregatorError;
configuration errors are servicekit's ConfigError."""

from __future__ import annotations


class AggregatorError(Exception):
    """Base class of every error the aggregator raises itself."""
