"""Identities: key files, permissions, fingerprints, the registry and revocation."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pqlink import (
    Identity,
    KeyFileError,
    Registry,
    RevokedPeerError,
    Role,
    SigAlg,
    UnknownPeerError,
    load_identity,
    load_public_identity,
    load_registry,
    save_identity,
    save_public_identity,
    save_registry,
)

from .conftest import Parties


def test_key_file_round_trip_with_mode_0600(tmp_path: Path, parties: Parties) -> None:
    path = tmp_path / "gw.key"
    save_identity(parties.gateway, path)
    assert (path.stat().st_mode & 0o777) == 0o600
    loaded = load_identity(path)
    assert loaded.public == parties.gateway.public
    assert loaded.public.fingerprint == parties.gateway.public.fingerprint
    # The loaded key really signs: its signature verifies under the original public key.
    sig = loaded.signing_key.sign(b"msg", b"ctx")
    parties.gateway.public.verify_key.verify(sig, b"msg", b"ctx")


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_key_file_readable_by_others_is_refused(
    tmp_path: Path, parties: Parties, mode: int
) -> None:
    path = tmp_path / "s.key"
    save_identity(parties.sensor, path)
    os.chmod(path, mode)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_identity(path)


def test_key_file_is_not_overwritten(tmp_path: Path, parties: Parties) -> None:
    path = tmp_path / "s.key"
    save_identity(parties.sensor, path)
    with pytest.raises(KeyFileError, match="exists"):
        save_identity(parties.sensor65, path)
    assert load_identity(path).public == parties.sensor.public


@pytest.mark.parametrize(
    "content", [b"", b"not json", b'{"format": "other"}', b'{"format": "pqlink-identity-v1"}']
)
def test_malformed_key_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.key"
    path.write_bytes(content)
    os.chmod(path, 0o600)
    with pytest.raises(KeyFileError):
        load_identity(path)


def test_missing_key_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match=r"cannot open key file .*absent.key: No such file"):
        load_identity(tmp_path / "absent.key")


def test_public_identity_round_trip_and_fingerprint_check(tmp_path: Path, parties: Parties) -> None:
    path = tmp_path / "gw.pub"
    save_public_identity(parties.gateway.public, path)
    assert load_public_identity(path) == parties.gateway.public
    doc = json.loads(path.read_text())
    doc["fingerprint"] = "00" * 32
    path.write_text(json.dumps(doc))
    with pytest.raises(KeyFileError, match="fingerprint"):
        load_public_identity(path)


def test_fingerprints_differ_per_key_and_name(parties: Parties) -> None:
    fps = {
        p.public.fingerprint
        for p in (parties.sensor, parties.sensor65, parties.gateway, parties.stranger)
    }
    assert len(fps) == 4
    assert len(parties.sensor.public.fingerprint) == 64


def test_ml_dsa_44_only_for_sensors() -> None:
    with pytest.raises(ValueError, match="sensors only"):
        Identity.generate("gw-x", Role.GATEWAY, SigAlg.ML_DSA_44)


def test_invalid_identifier_is_rejected() -> None:
    with pytest.raises(ValueError, match="identifier"):
        Identity.generate("bad name with spaces", Role.SENSOR)


def test_registry_enroll_lookup_revoke_persist(tmp_path: Path, parties: Parties) -> None:
    reg = Registry()
    reg.enroll(parties.sensor.public)
    reg.enroll(parties.gateway.public)
    assert reg.lookup("wearable-0001") == parties.sensor.public
    with pytest.raises(UnknownPeerError):
        reg.lookup("nobody")
    # Same name, different key: refused unless explicitly re-keyed.
    with pytest.raises(ValueError, match="already enrolled"):
        reg.enroll(parties.stranger.public)
    reg.revoke("wearable-0001")
    with pytest.raises(RevokedPeerError):
        reg.lookup("wearable-0001")
    path = tmp_path / "registry.json"
    save_registry(reg, path)
    again = load_registry(path)
    with pytest.raises(RevokedPeerError):
        again.lookup("wearable-0001")
    assert again.lookup("gw-01") == parties.gateway.public
    assert [p.name for p in again.active(Role.GATEWAY)] == ["gw-01"]
    assert len(load_registry(tmp_path / "missing.json", missing_ok=True)) == 0
    with pytest.raises(KeyFileError, match=r"missing.json: No such file"):
        load_registry(tmp_path / "missing.json")


def test_registry_rejects_duplicates_and_garbage(tmp_path: Path, parties: Parties) -> None:
    reg = Registry()
    reg.enroll(parties.sensor.public)
    doc = reg.to_json()
    doc["entries"].append(doc["entries"][0])
    with pytest.raises(KeyFileError, match="twice"):
        Registry.from_json(doc)
    path = tmp_path / "r.json"
    path.write_text("[1, 2]")
    with pytest.raises(KeyFileError):
        load_registry(path)
