"""TLS for the MQTT clients (gateway daemon, wearable emulator): the broker's CA, an optional
client certificate, and the key-exchange groups offered, e.g. the hybrid X25519MLKEM768."""

from __future__ import annotations

import ctypes
import ssl
from dataclasses import dataclass
from pathlib import Path

from servicekit.config import ConfigError

# TLS is a second layer that ends at the broker; the end-to-end pqlink sessions are unchanged.
# Python's ssl module has no call to choose the TLS 1.3 groups before Python 3.15
# (`set_ecdh_curve` takes one classical curve by name, and ML-KEM groups have none), so the
# groups are set with OpenSSL's own SSL_CTX_set1_groups_list on the context, through ctypes and
# the libssl that Python's ssl module is linked with. OPENSSL_CONF would do it for the whole
# process, but only when set before the interpreter starts.

# SSL_CTX_set1_groups_list(ctx, list) is a macro for SSL_CTX_ctrl(ctx, 92, 0, list).
_SSL_CTRL_SET_GROUPS_LIST = 92
# ML-KEM key exchange in TLS arrived in OpenSSL 3.5.
_PQ_OPENSSL = (3, 5)


class MqttTlsError(ConfigError):
    """The TLS settings of an MQTT client cannot be used on this machine."""


@dataclass(frozen=True, slots=True)
class MqttTls:
    """A broker CA file, an optional client certificate and key, optional groups
    (colon-separated OpenSSL group names, in order of preference)."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None
    groups: str | None = None


def _libssl() -> ctypes.CDLL:
    # dlopen of the _ssl extension resolves symbols through its own libssl, the one whose
    # contexts we are given; a Python with _ssl built in has them in the process itself.
    path = getattr(ssl._ssl, "__file__", None)  # type: ignore[attr-defined]
    return ctypes.CDLL(path) if path else ctypes.CDLL(None)


def _ssl_ctx_pointer(ctx: ssl.SSLContext, lib: ctypes.CDLL) -> int:
    """The SSL_CTX* of `ctx`: CPython's context object holds it right after its object header
    (PySSLContext, unchanged since Python 3.7). Checked against a value Python reads through
    the public API before anything is written through it."""
    header = object.__basicsize__
    pointer = ctypes.c_void_p.from_address(id(ctx) + header).value
    get_options = lib.SSL_CTX_get_options
    get_options.restype = ctypes.c_uint64
    get_options.argtypes = [ctypes.c_void_p]
    if not pointer or get_options(pointer) != int(ctx.options):
        raise MqttTlsError("cannot reach the OpenSSL context of this Python's ssl module")
    return pointer


def set_groups(ctx: ssl.SSLContext, groups: str) -> None:
    """Offer exactly `groups` (e.g. "X25519MLKEM768" or "X25519MLKEM768:X25519") in the TLS
    handshakes of `ctx`; an unknown group raises MqttTlsError saying which OpenSSL is in use."""
    lib = _libssl()
    ctrl = lib.SSL_CTX_ctrl
    ctrl.restype = ctypes.c_long
    ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_char_p]
    if ctrl(_ssl_ctx_pointer(ctx, lib), _SSL_CTRL_SET_GROUPS_LIST, 0, groups.encode()) != 1:
        # OpenSSL queued why; this thread's later handshakes must not report it as theirs.
        lib.ERR_clear_error()
        hint = ""
        if "MLKEM" in groups.upper() and ssl.OPENSSL_VERSION_INFO[:2] < _PQ_OPENSSL:
            hint = " (ML-KEM groups need OpenSSL 3.5 or newer, e.g. Debian 13)"
        raise MqttTlsError(
            f"TLS groups {groups!r} are not supported on {ssl.OPENSSL_VERSION}{hint}"
        )


def client_context(tls: MqttTls) -> ssl.SSLContext:
    """A TLS 1.3 client context that verifies the broker against `tls.ca` (host name
    included), presents the client certificate if any, and offers `tls.groups` if set."""
    try:
        ctx = ssl.create_default_context(cafile=str(tls.ca))
        if tls.cert is not None:
            ctx.load_cert_chain(str(tls.cert), str(tls.key) if tls.key is not None else None)
    except (OSError, ssl.SSLError) as exc:
        raise MqttTlsError(f"cannot load the MQTT TLS files: {exc}") from None
    # The groups are a TLS 1.3 key share; 1.2 would negotiate classical ECDHE regardless.
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    if tls.groups is not None:
        set_groups(ctx, tls.groups)
    return ctx
