"""The emulators' one exception root: each of their failures derives from EmulatorError."""

from __future__ import annotations


class EmulatorError(Exception):
    """Base class of every error the device emulators raise themselves."""


class HubClosedError(EmulatorError):
    """The MQTT hub has stopped (its `run` returned): nothing more goes out or comes in through
    it, so a wearable waiting on it ends instead of waiting for a connection that never comes."""
