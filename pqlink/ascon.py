"""Ascon-AEAD128 (NIST SP 800-232), the authenticated encryption of records and envelopes.

A zero-overhead re-export of the C extension pqlink._ascon; see its stub for the signatures."""

from pqlink._ascon import IMPLEMENTATION, KEY_SIZE, NONCE_SIZE, TAG_SIZE, decrypt, encrypt

__all__ = ["IMPLEMENTATION", "KEY_SIZE", "NONCE_SIZE", "TAG_SIZE", "decrypt", "encrypt"]
