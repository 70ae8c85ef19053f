"""Key files, public identities and registries on disk: who may write them, what is opened.

A private key file must be ours, unreadable by others and not a symlink; a registry or public
identity must not be writable by others; every failure is a KeyFileError naming path and cause."""

from __future__ import annotations

import grp
import os
import pwd
import stat
import subprocess
from pathlib import Path

import pytest

from pqlink import (
    KeyFileError,
    Registry,
    load_identity,
    load_public_identity,
    load_registry,
    save_identity,
    save_public_identity,
    save_registry,
)
from pqlink._errors import ErrorReason
from pqlink.identity import MAX_REGISTRY_FILE_SIZE

from .conftest import Parties


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_key_file_mode_0600_loads_and_each_group_or_other_bit_is_refused(
    tmp_path: Path, parties: Parties
) -> None:
    path = tmp_path / "gw.key"
    save_identity(parties.gateway, path)
    assert _mode(path) == 0o600
    assert load_identity(path).public == parties.gateway.public
    os.chmod(path, 0o400)
    assert load_identity(path).public == parties.gateway.public
    for bit in (0o040, 0o020, 0o010, 0o004, 0o002, 0o001):
        os.chmod(path, 0o600 | bit)
        with pytest.raises(KeyFileError, match=f"mode {0o600 | bit:04o}") as err:
            load_identity(path)
        assert err.value.reason is ErrorReason.KEY_FILE
        assert f"chmod 600 {path}" in str(err.value)


def test_key_file_that_is_a_directory_names_the_cause(tmp_path: Path) -> None:
    path = tmp_path / "identity.key"
    path.mkdir(mode=0o755)
    with pytest.raises(KeyFileError, match=r"identity.key is a directory, not a file") as err:
        load_identity(path)
    assert "chmod" not in str(err.value)


def test_unreadable_key_file_is_a_key_file_error(tmp_path: Path, parties: Parties) -> None:
    if os.geteuid() == 0:
        # root reads a mode-000 file anyway; a FIFO stands in for "cannot read as a file".
        path = tmp_path / "fifo.key"
        os.mkfifo(path, 0o600)
        with pytest.raises(KeyFileError, match=r"fifo.key is not a regular file"):
            load_identity(path)
        return
    path = tmp_path / "locked.key"
    save_identity(parties.gateway, path)
    os.chmod(path, 0o000)
    with pytest.raises(KeyFileError, match=r"cannot open key file .*locked.key: Permission denied"):
        load_identity(path)


def test_key_file_symlink_is_not_followed(tmp_path: Path, parties: Parties) -> None:
    real = tmp_path / "real.key"
    save_identity(parties.gateway, real)
    link = tmp_path / "link.key"
    link.symlink_to(real)
    with pytest.raises(KeyFileError, match=r"link.key is a symbolic link; refusing to follow it"):
        load_identity(link)
    assert load_identity(real).public == parties.gateway.public


def _privileged(*command: str) -> None:
    """Run a command that needs root: directly as root, else through passwordless sudo; the
    test fails saying so when neither is available."""
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    done = subprocess.run([*sudo, *command], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(command)} needs root or passwordless sudo: {done.stderr.strip()}")


def test_files_of_another_owner_are_refused(tmp_path: Path, parties: Parties) -> None:
    key, pub, reg = tmp_path / "gw.key", tmp_path / "gw.pub", tmp_path / "reg.json"
    save_identity(parties.gateway, key)
    save_public_identity(parties.gateway.public, pub)
    save_registry(parties.sensor_registry(), reg)
    _privileged("chown", "4242", str(key), str(pub), str(reg))
    try:
        for load, path in ((load_public_identity, pub), (load_registry, reg)):
            with pytest.raises(KeyFileError, match=r"owned by uid 4242, not by this user"):
                load(path)
        # A key file is 0600: only root gets as far as its owner; anyone else cannot open it.
        refusal = "owned by uid 4242" if os.geteuid() == 0 else "cannot open key file .*denied"
        with pytest.raises(KeyFileError, match=refusal):
            load_identity(key)
        # root's own files are fine for any user
        _privileged("chown", "0", str(key), str(pub), str(reg))
        assert load_public_identity(pub) == parties.gateway.public
        assert len(load_registry(reg)) == 2
    finally:
        _privileged("chown", str(os.geteuid()), str(key), str(pub), str(reg))
    assert load_identity(key).public == parties.gateway.public


def test_registry_written_0640_atomically_and_0600_on_request(
    tmp_path: Path, parties: Parties
) -> None:
    path = tmp_path / "registry.json"
    save_registry(parties.sensor_registry(), path)
    assert _mode(path) == 0o640
    assert len(load_registry(path)) == 2
    save_registry(Registry(), path, mode=0o600)
    assert _mode(path) == 0o600
    assert len(load_registry(path)) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["registry.json"]  # no temp file left
    for mode in (0o644, 0o660, 0o400):
        with pytest.raises(ValueError, match="0600 or 0640"):
            save_registry(Registry(), path, mode=mode)


def _shared_group(path: Path) -> None:
    """Give the file a group that is nobody's private group (Debian's `nogroup`)."""
    _privileged("chgrp", "nogroup", str(path))


def test_group_write_in_the_owners_private_group_is_accepted(
    tmp_path: Path, parties: Parties
) -> None:
    """Debian gives each user a private group and umask 002: files they write are 0664, and
    the group's write bit lets no one else in. In any other group it is refused."""
    me, group = pwd.getpwuid(os.geteuid()), grp.getgrgid(os.getegid())
    assert group.gr_name == me.pw_name, "the test runs as a user whose primary group is its own"
    assert set(group.gr_mem) <= {me.pw_name}
    path, pub = tmp_path / "registry.json", tmp_path / "gw.pub"
    save_registry(parties.sensor_registry(), path)
    save_public_identity(parties.gateway.public, pub)
    for p in (path, pub):
        os.chmod(p, 0o664)
    assert len(load_registry(path)) == 2
    assert load_public_identity(pub) == parties.gateway.public
    for p in (path, pub):
        _shared_group(p)
    with pytest.raises(KeyFileError, match="mode 0664: group or others can write"):
        load_registry(path)
    with pytest.raises(KeyFileError, match="mode 0664: group or others can write"):
        load_public_identity(pub)


@pytest.mark.parametrize("bit", [0o020, 0o002])
def test_group_or_world_writable_registry_is_refused(
    tmp_path: Path, parties: Parties, bit: int
) -> None:
    path = tmp_path / "registry.json"
    save_registry(parties.sensor_registry(), path)
    _shared_group(path)
    os.chmod(path, 0o644)
    assert len(load_registry(path)) == 2  # readable by all is fine: it holds public keys
    os.chmod(path, 0o644 | bit)
    with pytest.raises(KeyFileError, match=f"mode {0o644 | bit:04o}: group or others can write"):
        load_registry(path)


@pytest.mark.parametrize("bit", [0o020, 0o002])
def test_group_or_world_writable_public_identity_is_refused(
    tmp_path: Path, parties: Parties, bit: int
) -> None:
    path = tmp_path / "gw.pub"
    save_public_identity(parties.gateway.public, path)
    _shared_group(path)
    assert _mode(path) == 0o644
    assert load_public_identity(path) == parties.gateway.public
    os.chmod(path, 0o644 | bit)
    with pytest.raises(KeyFileError, match="group or others can write"):
        load_public_identity(path)


def test_registry_through_a_symlink_is_checked_at_its_target(
    tmp_path: Path, parties: Parties
) -> None:
    # Kubernetes mounts a ConfigMap as symlinks; the checks apply to the file opened.
    real = tmp_path / "data" / "gateways.json"
    save_registry(parties.gateway_registry(), real)
    link = tmp_path / "gateways.json"
    link.symlink_to(real)
    assert len(load_registry(link)) == 2
    os.chmod(real, 0o646)
    with pytest.raises(KeyFileError, match="group or others can write"):
        load_registry(link)


def test_missing_registry_is_an_error_unless_asked_for_an_empty_one(tmp_path: Path) -> None:
    path = tmp_path / "registry.json"
    with pytest.raises(KeyFileError, match=r"cannot open registry .*registry.json: No such file"):
        load_registry(path)
    assert len(load_registry(path, missing_ok=True)) == 0
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(tmp_path / "nowhere.json")
    with pytest.raises(KeyFileError, match="No such file"):
        load_registry(dangling, missing_ok=True)  # a broken link is not "no registry"


def test_registry_directory_and_public_identity_directory(tmp_path: Path) -> None:
    (tmp_path / "reg").mkdir()
    with pytest.raises(KeyFileError, match=r"registry .* is a directory, not a file"):
        load_registry(tmp_path / "reg")
    with pytest.raises(KeyFileError, match=r"public identity .* is a directory, not a file"):
        load_public_identity(tmp_path / "reg")


def test_key_file_that_is_not_a_json_object(tmp_path: Path) -> None:
    path = tmp_path / "list.key"
    path.write_text("[1, 2]")
    os.chmod(path, 0o600)
    with pytest.raises(KeyFileError, match=r"list.key is malformed: not a JSON object"):
        load_identity(path)


def test_registry_size_is_bounded_at_its_limit(tmp_path: Path) -> None:
    """A registry of some thousands of gateways is read; one byte past the bound is refused
    before a byte of it is read (sparse files: nothing is written to disk)."""
    path = tmp_path / "gateways.json"
    with path.open("wb") as fh:
        fh.truncate(MAX_REGISTRY_FILE_SIZE)
    path.chmod(0o640)
    # at the limit it is read, and then found not to be JSON
    with pytest.raises(KeyFileError, match="is not JSON"):
        load_registry(path)
    with path.open("r+b") as fh:
        fh.truncate(MAX_REGISTRY_FILE_SIZE + 1)
    with pytest.raises(KeyFileError, match=f"is {MAX_REGISTRY_FILE_SIZE + 1} bytes, larger"):
        load_registry(path)
