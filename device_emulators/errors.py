"""The emulators' one exception root: each of their failures derives from EmulatorError."""

from __future__ import annotations


class EmulatorError(Exception):
    """Base class of every error the device emulators raise themselves."""
