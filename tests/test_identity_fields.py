"""Identities and registries in detail: how files are written (in place, atomically, laid out
one field a line), which opened files are accepted (owner, mode, user-private group, symlinks,
large files), what each refusal says, and the registry's membership, iteration and filters."""

from __future__ import annotations

import errno
import fcntl
import grp
import json
import os
import pwd
from collections.abc import Callable
from pathlib import Path

import pytest

from pqlink import (
    Identity,
    KeyFileError,
    Registry,
    Role,
    SigAlg,
    load_identity,
    load_public_identity,
    load_registry,
    save_identity,
    save_public_identity,
    save_registry,
)
from pqlink.identity import PublicIdentity

from .conftest import Parties
from .test_key_files import _privileged


def test_saving_creates_missing_parent_directories(tmp_path: Path, parties: Parties) -> None:
    key = tmp_path / "a" / "b" / "gw.key"
    pub = tmp_path / "c" / "d" / "gw.pub"
    reg = tmp_path / "e" / "f" / "registry.json"
    save_identity(parties.gateway, key)
    save_public_identity(parties.gateway.public, pub)
    save_registry(parties.gateway_registry(), reg)
    assert load_identity(key).public == parties.gateway.public
    assert load_public_identity(pub) == parties.gateway.public
    assert len(load_registry(reg)) == 2


def test_temp_file_is_hidden_beside_the_target(
    tmp_path: Path, parties: Parties, monkeypatch: pytest.MonkeyPatch
) -> None:
    renamed: list[tuple[Path, Path]] = []
    real_replace = os.replace

    def recording_replace(src: str, dst: Path) -> None:
        renamed.append((Path(src), Path(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", recording_replace)
    target = tmp_path / "keys" / "gw.key"
    save_identity(parties.gateway, target)
    ((src, dst),) = renamed
    assert dst == target
    assert src.parent == target.parent
    assert src.name.startswith(".gw.key.")
    assert sorted(p.name for p in target.parent.iterdir()) == ["gw.key"]


def test_failed_write_removes_the_temp_file_and_reports_the_failure(
    tmp_path: Path, parties: Parties, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="Input/output error") as err:
        save_registry(parties.sensor_registry(), tmp_path / "registry.json")
    assert err.value.errno == errno.EIO
    assert list(tmp_path.iterdir()) == []


def test_failed_rename_of_a_vanished_temp_file_reports_the_rename_failure(
    tmp_path: Path, parties: Parties, monkeypatch: pytest.MonkeyPatch
) -> None:
    def vanishing_replace(src: str, dst: Path) -> None:
        Path(src).unlink()
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "replace", vanishing_replace)
    with pytest.raises(OSError, match="cross-device") as err:
        save_public_identity(parties.gateway.public, tmp_path / "gw.pub")
    assert err.value.errno == errno.EXDEV
    assert list(tmp_path.iterdir()) == []


def _assert_two_space_layout(path: Path) -> None:
    text = path.read_text()
    lines = text.splitlines()
    assert text.endswith("}\n")
    assert lines[0] == "{"
    assert lines[1] == '  "format": ' + json.dumps(json.loads(text)["format"]) + ","


def test_files_are_laid_out_one_field_a_line(tmp_path: Path, parties: Parties) -> None:
    key, pub, reg = tmp_path / "s.key", tmp_path / "gw.pub", tmp_path / "registry.json"
    save_identity(parties.sensor, key)
    save_public_identity(parties.gateway.public, pub)
    save_registry(parties.sensor_registry(), reg)
    for path in (key, pub, reg):
        _assert_two_space_layout(path)
    assert '\n  "id": "wearable-0001",\n' in key.read_text()
    assert '\n  "role": "gateway",\n' in pub.read_text()
    assert '\n  "entries": [\n    {\n      "format": ' in reg.read_text()


def test_file_of_uid_1_is_refused_like_any_other_user(tmp_path: Path, parties: Parties) -> None:
    """Only this user and root (uid 0) are trusted owners; uid 1 is neither."""
    assert os.geteuid() != 1, "the test runs as a user other than uid 1"
    pub = tmp_path / "gw.pub"
    save_public_identity(parties.gateway.public, pub)
    _privileged("chown", "1", str(pub))
    try:
        with pytest.raises(KeyFileError, match=r"is owned by uid 1, not by this user"):
            load_public_identity(pub)
    finally:
        _privileged("chown", str(os.geteuid()), str(pub))


def test_files_are_opened_close_on_exec_and_non_blocking(
    tmp_path: Path, parties: Parties, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key file descriptor is never inherited by a program the process starts, and opening
    one never waits (as opening a FIFO would)."""
    key = tmp_path / "gw.key"
    save_identity(parties.gateway, key)
    seen: list[int] = []
    nonblocking: list[int] = []
    real_read = os.read

    def inspecting_read(fd: int, n: int) -> bytes:
        seen.append(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC)
        nonblocking.append(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK)
        return real_read(fd, n)

    monkeypatch.setattr(os, "read", inspecting_read)
    assert load_identity(key).public == parties.gateway.public
    assert seen
    assert all(flag == fcntl.FD_CLOEXEC for flag in seen)
    # opened without blocking, so a FIFO in its place never stalls the open
    assert all(flag == os.O_NONBLOCK for flag in nonblocking)


def test_readable_private_key_says_group_or_others_can_access_it(
    tmp_path: Path, parties: Parties
) -> None:
    key = tmp_path / "gw.key"
    save_identity(parties.gateway, key)
    os.chmod(key, 0o640)
    with pytest.raises(KeyFileError, match=r"mode 0640: group or others can access it \("):
        load_identity(key)


def test_shared_file_with_world_write_says_group_or_others_can_write_it(
    tmp_path: Path, parties: Parties
) -> None:
    pub = tmp_path / "gw.pub"
    save_public_identity(parties.gateway.public, pub)
    os.chmod(pub, 0o646)
    with pytest.raises(KeyFileError, match=r"mode 0646: group or others can write it \(chmod 644"):
        load_public_identity(pub)


def test_key_file_larger_than_one_read_is_read_whole(tmp_path: Path, parties: Parties) -> None:
    """A file of more than 64 KiB (here: valid JSON padded with spaces) is read in full."""
    key = tmp_path / "gw.key"
    save_identity(parties.gateway, key)
    text = key.read_text()
    padded = text.replace("{", "{" + " " * 200_000, 1)
    key.write_text(padded)
    assert key.stat().st_size > 3 * 65536
    assert load_identity(key).public == parties.gateway.public


def test_read_failure_after_open_names_the_file_and_the_cause(
    tmp_path: Path, parties: Parties, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = tmp_path / "gw.key"
    save_identity(parties.gateway, key)

    def failing_read(fd: int, n: int) -> bytes:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "read", failing_read)
    with pytest.raises(KeyFileError) as err:
        load_identity(key)
    assert str(err.value) == f"cannot read key file {key}: {os.strerror(errno.EIO)}"


def _fake_group(name: str, gid: int, members: list[str]) -> Callable[[int], grp.struct_group]:
    def getgrgid(wanted: int) -> grp.struct_group:
        if wanted != gid:
            raise KeyError(wanted)
        return grp.struct_group((name, "x", gid, members))

    return getgrgid


def _own_primary_group() -> tuple[str, int]:
    me = pwd.getpwuid(os.geteuid())
    return me.pw_name, me.pw_gid


def test_group_write_is_refused_when_the_group_is_unknown(
    tmp_path: Path, parties: Parties, monkeypatch: pytest.MonkeyPatch
) -> None:
    pub = tmp_path / "gw.pub"
    save_public_identity(parties.gateway.public, pub)
    os.chmod(pub, 0o664)
    monkeypatch.setattr(grp, "getgrgid", _fake_group("none", -1, []))
    with pytest.raises(KeyFileError, match="mode 0664: group or others can write"):
        load_public_identity(pub)


@pytest.mark.parametrize(
    ("suffix", "others"),
    [("-staff", []), ("", ["mallory"])],
    ids=["primary group of another name", "private group with another member"],
)
def test_group_write_is_refused_unless_the_group_is_the_owner_s_alone(
    tmp_path: Path,
    parties: Parties,
    monkeypatch: pytest.MonkeyPatch,
    suffix: str,
    others: list[str],
) -> None:
    name, gid = _own_primary_group()
    reg = tmp_path / "registry.json"
    save_registry(parties.sensor_registry(), reg)
    os.chmod(reg, 0o664)
    members = [name, *others] if others else []
    monkeypatch.setattr(grp, "getgrgid", _fake_group(name + suffix, gid, members))
    with pytest.raises(KeyFileError, match="mode 0664: group or others can write"):
        load_registry(reg)
    # listing only the owner itself as a member keeps the group private
    monkeypatch.setattr(grp, "getgrgid", _fake_group(name, gid, [name]))
    assert len(load_registry(reg)) == 2


def test_loaded_sensor_key_has_no_kem_key(tmp_path: Path, parties: Parties) -> None:
    key = tmp_path / "sensor.key"
    save_identity(parties.sensor, key)
    loaded = load_identity(key)
    assert loaded.kem_key is None
    assert loaded.public.kem_public is None
    assert loaded.public == parties.sensor.public


def test_generated_sensor_has_no_kem_key_and_others_have_one() -> None:
    sensor = Identity.generate("wearable-0100", Role.SENSOR)
    assert sensor.kem_key is None
    assert sensor.public.kem_public is None
    assert sensor.signing_key.alg is SigAlg.ML_DSA_65
    gateway = Identity.generate("gw-100", Role.GATEWAY)
    assert gateway.kem_key is not None
    assert gateway.public.kem_public is not None


def test_public_identity_is_read_through_a_symlink(tmp_path: Path, parties: Parties) -> None:
    real = tmp_path / "real" / "gw.pub"
    save_public_identity(parties.gateway.public, real)
    link = tmp_path / "gw.pub"
    link.symlink_to(real)
    assert load_public_identity(link) == parties.gateway.public


def test_public_identity_refusals_name_the_cause(tmp_path: Path) -> None:
    pub = tmp_path / "gw.pub"
    pub.write_text("not json")
    os.chmod(pub, 0o644)
    with pytest.raises(KeyFileError, match=rf"^public identity {pub} is not JSON: "):
        load_public_identity(pub)
    with pytest.raises(KeyFileError, match=r"^public identity is malformed: .*'sig_alg'"):
        PublicIdentity.from_json(
            {"format": "pqlink-public-identity-v1", "id": "s", "role": "sensor"}
        )


def test_registry_membership_and_iteration(parties: Parties) -> None:
    reg = parties.sensor_registry()
    assert "wearable-0001" in reg
    assert "wearable-0002" in reg
    assert "gw-01" not in reg
    reg.revoke("wearable-0001")
    assert "wearable-0001" in reg  # a revoked peer stays listed
    entries = list(reg)
    assert [(e.identity.name, e.revoked) for e in entries] == [
        ("wearable-0001", True),
        ("wearable-0002", False),
    ]
    assert entries[1].identity == parties.sensor65.public
    assert list(Registry()) == []


def test_registry_active_skips_revoked_and_filters_by_role(parties: Parties) -> None:
    reg = parties.sensor_registry()
    reg.enroll(parties.gateway.public)
    reg.enroll(parties.aggregator.public)
    assert reg.active() == [
        parties.sensor.public,
        parties.sensor65.public,
        parties.gateway.public,
        parties.aggregator.public,
    ]
    assert reg.active(Role.SENSOR) == [parties.sensor.public, parties.sensor65.public]
    assert reg.active(Role.GATEWAY) == [parties.gateway.public]
    reg.revoke("wearable-0001")
    reg.revoke("aggregator")
    assert reg.active(Role.SENSOR) == [parties.sensor65.public]
    assert reg.active(Role.AGGREGATOR) == []
    assert reg.active() == [parties.sensor65.public, parties.gateway.public]
