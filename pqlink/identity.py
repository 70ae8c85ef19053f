"""Long-term identities: key generation, key files (0600, checked on the opened file),
fingerprints, and the registry (allowlist with revocation) that says which peers are accepted."""

from __future__ import annotations

import base64
import enum
import errno
import grp
import hashlib
import json
import os
import pwd
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pqlink._codec import check_identifier
from pqlink._errors import KeyFileError, RevokedPeerError, UnknownPeerError
from pqlink.keys import HybridPrivateKey, HybridPublicKey, SigAlg, SigningKey, VerifyKey

_PRIVATE_FORMAT = "pqlink-identity-v1"
_PUBLIC_FORMAT = "pqlink-public-identity-v1"
_REGISTRY_FORMAT = "pqlink-registry-v1"


class Role(enum.StrEnum):
    SENSOR = "sensor"
    GATEWAY = "gateway"
    AGGREGATOR = "aggregator"


@dataclass(frozen=True, slots=True)
class PublicIdentity:
    """What others know of a party: its name, role, signature key and (for gateways and the
    aggregator) the hybrid KEM key that envelopes are sealed to."""

    name: str
    role: Role
    verify_key: VerifyKey
    kem_public: HybridPublicKey | None = None

    def __post_init__(self) -> None:
        check_identifier(self.name)
        if self.role is not Role.SENSOR and self.kem_public is None:
            raise ValueError(f"{self.role} identity {self.name!r} needs a KEM public key")

    @property
    def fingerprint(self) -> str:
        """SHA-256 over the canonical public encoding, as 64 hex digits."""
        h = hashlib.sha256(b"pqlink-identity-fp-v1\0")
        for part in (
            self.name.encode(),
            self.role.value.encode(),
            bytes((self.verify_key.alg,)),
            self.verify_key.raw,
            self.kem_public.raw if self.kem_public is not None else b"",
        ):
            h.update(len(part).to_bytes(4, "big") + part)
        return h.hexdigest()

    @property
    def short_fingerprint(self) -> str:
        fp = self.fingerprint[:32]
        return ":".join(fp[i : i + 4] for i in range(0, 32, 4))

    def to_json(self) -> dict[str, Any]:
        return {
            "format": _PUBLIC_FORMAT,
            "id": self.name,
            "role": self.role.value,
            "sig_alg": self.verify_key.alg.label,
            "sig_public": base64.b64encode(self.verify_key.raw).decode(),
            "kem_public": (
                base64.b64encode(self.kem_public.raw).decode() if self.kem_public else None
            ),
            "fingerprint": self.fingerprint,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> PublicIdentity:
        try:
            if doc.get("format") != _PUBLIC_FORMAT:
                raise ValueError(f"format is {doc.get('format')!r}, expected {_PUBLIC_FORMAT!r}")
            kem = doc.get("kem_public")
            ident = cls(
                name=str(doc["id"]),
                role=Role(doc["role"]),
                verify_key=VerifyKey(
                    SigAlg.from_label(doc["sig_alg"]), base64.b64decode(doc["sig_public"])
                ),
                kem_public=HybridPublicKey(base64.b64decode(kem)) if kem else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise KeyFileError(f"public identity is malformed: {exc}") from None
        expected = doc.get("fingerprint")
        if expected is not None and expected != ident.fingerprint:
            raise KeyFileError(f"public identity {ident.name!r}: fingerprint does not match keys")
        return ident


class Identity:
    """A party's private identity: ML-DSA signing key and, unless a sensor, a hybrid KEM key."""

    __slots__ = ("kem_key", "name", "public", "role", "signing_key")

    def __init__(
        self,
        name: str,
        role: Role,
        signing_key: SigningKey,
        kem_key: HybridPrivateKey | None = None,
    ) -> None:
        self.name = name
        self.role = role
        self.signing_key = signing_key
        self.kem_key = kem_key
        self.public = PublicIdentity(
            name, role, signing_key.public_key(), kem_key.public_key() if kem_key else None
        )

    @classmethod
    def generate(cls, name: str, role: Role, sig_alg: SigAlg | None = None) -> Identity:
        """New keys; ML-DSA-65 unless asked otherwise (ML-DSA-44 is allowed for sensors only)."""
        alg = sig_alg or SigAlg.ML_DSA_65
        if alg is SigAlg.ML_DSA_44 and role is not Role.SENSOR:
            raise ValueError(f"ML-DSA-44 is allowed for sensors only, not for a {role}")
        kem = None if role is Role.SENSOR else HybridPrivateKey.generate()
        return cls(name, role, SigningKey.generate(alg), kem)

    def __repr__(self) -> str:
        return f"Identity({self.name!r}, {self.role.value}, fp={self.public.short_fingerprint})"


# --- files ----------------------------------------------------------------------------------


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    """Write via a temp file in the same directory, fsync, rename: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


#: Bits that make a private key file unsafe: any access by group or others.
_PRIVATE_FORBIDDEN = stat.S_IRWXG | stat.S_IRWXO
#: Bits that make a public identity or a registry unsafe: anyone but the owner could enrol.
_SHARED_FORBIDDEN = stat.S_IWGRP | stat.S_IWOTH
_MAX_KEY_FILE_SIZE = 16 * 1024 * 1024
#: A registry holds about 4.5 KB per enrolled party: room for some 14,000 gateways.
MAX_REGISTRY_FILE_SIZE = 64 * 1024 * 1024


def _user_private_group(st: os.stat_result) -> bool:
    """Whether a file's group is its owner's user-private group: the group of the owner's
    name that is the owner's primary group and has no other member. Debian gives every user
    one and a umask of 002, so files a user writes are group-writable; like Debian's OpenSSH
    (its user-group-modes change), such a group's write bit is taken as the owner's alone."""
    try:
        owner = pwd.getpwuid(st.st_uid)
        group = grp.getgrgid(st.st_gid)
    except KeyError:
        return False
    return (
        owner.pw_gid == st.st_gid
        and group.gr_name == owner.pw_name
        and all(member == owner.pw_name for member in group.gr_mem)
    )


def _read_checked(
    path: Path,
    what: str,
    forbidden: int,
    *,
    follow_symlinks: bool,
    max_size: int = _MAX_KEY_FILE_SIZE,
) -> bytes:
    """Open once and check the opened file itself (fstat on the fd), so nothing can swap the
    file between the check and the read; raise KeyFileError naming the path and the cause."""
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
    if not follow_symlinks:
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow_symlinks:
            raise KeyFileError(
                f"{what} {path} is a symbolic link; refusing to follow it (point to the file)"
            ) from None
        raise KeyFileError(f"cannot open {what} {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise KeyFileError(f"{what} {path} is a directory, not a file")
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"{what} {path} is not a regular file")
        if st.st_uid not in {os.geteuid(), 0}:
            raise KeyFileError(
                f"{what} {path} is owned by uid {st.st_uid}, not by this user "
                f"(uid {os.geteuid()}) or root"
            )
        bad = stat.S_IMODE(st.st_mode) & forbidden
        if bad == stat.S_IWGRP and forbidden == _SHARED_FORBIDDEN and _user_private_group(st):
            bad = 0  # the group holds only the owner: its write bit lets no one else in
        if bad:
            access = "access" if forbidden == _PRIVATE_FORBIDDEN else "write"
            raise KeyFileError(
                f"{what} {path} has mode {stat.S_IMODE(st.st_mode):04o}: group or others can "
                f"{access} it (chmod {stat.S_IMODE(st.st_mode) & ~forbidden:o} {path})"
            )
        if st.st_size > max_size:
            raise KeyFileError(f"{what} {path} is {st.st_size} bytes, larger than any we write")
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise KeyFileError(f"cannot read {what} {path}: {exc.strerror}") from None
    finally:
        os.close(fd)


def save_identity(
    identity: Identity, path: str | os.PathLike[str], *, overwrite: bool = False
) -> None:
    """Write the private key file with mode 0600."""
    target = Path(path)
    if target.exists() and not overwrite:
        raise KeyFileError(f"{target} exists; refusing to overwrite a key file")
    doc: dict[str, Any] = {
        "format": _PRIVATE_FORMAT,
        "id": identity.name,
        "role": identity.role.value,
        "sig_alg": identity.signing_key.alg.label,
        "sig_seed": identity.signing_key.seed_bytes().hex(),
        "kem_seed": None,
        "x25519": None,
    }
    if identity.kem_key is not None:
        mlkem_seed, x_secret = identity.kem_key.seeds()
        doc["kem_seed"] = mlkem_seed.hex()
        doc["x25519"] = x_secret.hex()
    _atomic_write(target, (json.dumps(doc, indent=2) + "\n").encode(), 0o600)


def load_identity(path: str | os.PathLike[str]) -> Identity:
    """Load a private key file: it must be a regular file (not a symlink) owned by this user or
    root that group and others cannot access at all."""
    target = Path(path)
    data = _read_checked(target, "key file", _PRIVATE_FORBIDDEN, follow_symlinks=False)
    try:
        doc = json.loads(data)
        if not isinstance(doc, dict):
            raise TypeError("not a JSON object")
        if doc.get("format") != _PRIVATE_FORMAT:
            raise ValueError(f"format is {doc.get('format')!r}, expected {_PRIVATE_FORMAT!r}")
        role = Role(doc["role"])
        signing = SigningKey(SigAlg.from_label(doc["sig_alg"]), bytes.fromhex(doc["sig_seed"]))
        kem = None
        if doc.get("kem_seed"):
            kem = HybridPrivateKey(bytes.fromhex(doc["kem_seed"]), bytes.fromhex(doc["x25519"]))
        return Identity(str(doc["id"]), role, signing, kem)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise KeyFileError(f"key file {target} is malformed: {exc}") from None


def save_public_identity(public: PublicIdentity, path: str | os.PathLike[str]) -> None:
    """Write a public identity file (0644: it is meant to be handed out)."""
    _atomic_write(Path(path), (json.dumps(public.to_json(), indent=2) + "\n").encode(), 0o644)


def load_public_identity(path: str | os.PathLike[str]) -> PublicIdentity:
    """Load a public identity; refuse one that group or others can write, or another user owns."""
    data = _read_checked(Path(path), "public identity", _SHARED_FORBIDDEN, follow_symlinks=True)
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise KeyFileError(f"public identity {path} is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise KeyFileError(f"public identity {path} is not a JSON object")
    return PublicIdentity.from_json(doc)


# --- registry -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RegistryEntry:
    identity: PublicIdentity
    revoked: bool = False


class Registry:
    """Allowlist of peers by name. `lookup` raises unless the peer is enrolled and not revoked."""

    def __init__(self, entries: dict[str, RegistryEntry] | None = None) -> None:
        self._entries: dict[str, RegistryEntry] = dict(entries or {})

    def enroll(self, identity: PublicIdentity, *, replace: bool = False) -> None:
        current = self._entries.get(identity.name)
        if current is not None and current.identity != identity and not replace:
            raise ValueError(
                f"{identity.name!r} is already enrolled with fingerprint "
                f"{current.identity.short_fingerprint}; pass replace=True to re-key it"
            )
        self._entries[identity.name] = RegistryEntry(identity)

    def revoke(self, name: str) -> None:
        entry = self._entries.get(name)
        if entry is None:
            raise UnknownPeerError(f"{name!r} is not enrolled")
        self._entries[name] = RegistryEntry(entry.identity, revoked=True)

    def lookup(self, name: str) -> PublicIdentity:
        entry = self._entries.get(name)
        if entry is None:
            raise UnknownPeerError(f"peer {name!r} is not enrolled")
        if entry.revoked:
            raise RevokedPeerError(f"peer {name!r} is revoked")
        return entry.identity

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[RegistryEntry]:
        return iter(list(self._entries.values()))

    def __len__(self) -> int:
        return len(self._entries)

    def active(self, role: Role | None = None) -> list[PublicIdentity]:
        return [
            e.identity
            for e in self._entries.values()
            if not e.revoked and (role is None or e.identity.role is role)
        ]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": _REGISTRY_FORMAT,
            "entries": [
                {**e.identity.to_json(), "revoked": e.revoked}
                for e in sorted(self._entries.values(), key=lambda e: e.identity.name)
            ],
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Registry:
        if doc.get("format") != _REGISTRY_FORMAT:
            raise KeyFileError(
                f"registry format is {doc.get('format')!r}, expected {_REGISTRY_FORMAT!r}"
            )
        reg = cls()
        entries = doc.get("entries")
        if not isinstance(entries, list):
            raise KeyFileError("registry has no 'entries' list")
        for item in entries:
            if not isinstance(item, dict):
                raise KeyFileError("registry entry is not an object")
            ident = PublicIdentity.from_json({k: v for k, v in item.items() if k != "revoked"})
            if ident.name in reg._entries:
                raise KeyFileError(f"registry lists {ident.name!r} twice")
            reg._entries[ident.name] = RegistryEntry(ident, revoked=bool(item.get("revoked")))
        return reg


def load_registry(path: str | os.PathLike[str], *, missing_ok: bool = False) -> Registry:
    """Load a registry file. A missing file is a KeyFileError unless `missing_ok` (for the
    commands that create the registry with its first entry); a registry that group or others
    can write, or that another user owns, is refused: whoever can write it can enrol a peer."""
    target = Path(path)
    if missing_ok and not os.path.lexists(target):
        return Registry()
    # A registry may be a symlink (Kubernetes mounts ConfigMaps so); the checks apply to the
    # file actually opened.
    data = _read_checked(
        target,
        "registry",
        _SHARED_FORBIDDEN,
        follow_symlinks=True,
        max_size=MAX_REGISTRY_FILE_SIZE,
    )
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise KeyFileError(f"registry {target} is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise KeyFileError(f"registry {target} is not a JSON object")
    return Registry.from_json(doc)


REGISTRY_FILE_MODES = (0o600, 0o640)


def save_registry(registry: Registry, path: str | os.PathLike[str], *, mode: int = 0o640) -> None:
    """Write the registry atomically with mode 0640 (or 0600): readable by the service group,
    writable only by its owner."""
    if mode not in REGISTRY_FILE_MODES:
        raise ValueError(f"registry mode must be 0600 or 0640, got {mode:04o}")
    data = (json.dumps(registry.to_json(), indent=2) + "\n").encode()
    _atomic_write(Path(path), data, mode)
