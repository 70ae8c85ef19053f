"""TLS to the broker as a second layer: the [mqtt] tls_* keys, a real mosquitto TLS listener,
the hybrid X25519MLKEM768 group where OpenSSL >= 3.5, and a clear error where it is older."""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from device_emulators.cli import main as emulate_main
from gateway.config import ConfigError, parse_config
from servicekit.mqtt_tls import MqttTls, MqttTlsError, client_context
from testbed.mosquitto import BrokerTls, Mosquitto

from .harness import (
    DaemonProcess,
    EmulatorProcess,
    GatewaySetup,
    enroll,
    make_gateway,
    stored_count,
    wait_until,
)
from .test_replay import beat_count, write_record

HYBRID = "X25519MLKEM768"
PQ_TLS = ssl.OPENSSL_VERSION_INFO[:2] >= (3, 5)


def _write(path: Path, obj: x509.Certificate | ec.EllipticCurvePrivateKey) -> Path:
    if isinstance(obj, x509.Certificate):
        path.write_bytes(obj.public_bytes(serialization.Encoding.PEM))
    else:
        path.write_bytes(
            obj.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return path


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = issuer if issuer is not None else (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        # Python 3.13 verifies with VERIFY_X509_STRICT by default: key identifiers are required
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), False
        )
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
    else:
        builder = (
            builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, False, False, False, False), True
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        )
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture
def pki(tmp_path: Path) -> BrokerTls:
    """A private CA and a server certificate for 127.0.0.1 (ECDSA P-256: any OpenSSL 3)."""
    d = tmp_path / "pki"
    d.mkdir()
    ca_key = ec.generate_private_key(ec.SECP256R1())
    server_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("iomt test CA", ca_key, None, ca=True)
    server = _cert("127.0.0.1", server_key, ("iomt test CA", ca_key), ca=False)
    return BrokerTls(
        _write(d / "ca.pem", ca),
        _write(d / "server.pem", server),
        _write(d / "server.key", server_key),
    )


@pytest.fixture
def tls_mosquitto(tmp_path: Path, pki: BrokerTls) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path / "mosquitto", tls=pki)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def _doc(mqtt: dict[str, object]) -> dict[str, object]:
    return {"gateway": {"id": "gw-01", "state_dir": "state"}, "mqtt": mqtt}


def test_tls_keys_are_off_by_default_resolved_and_checked(tmp_path: Path) -> None:
    assert parse_config(_doc({}), tmp_path).mqtt.tls is None
    cfg = parse_config(_doc({"tls_ca": "ca.pem", "tls_groups": "X25519"}), tmp_path).mqtt
    assert cfg.tls == MqttTls(tmp_path / "ca.pem", None, None, "X25519")
    with pytest.raises(ConfigError, match=r"^mqtt\.tls_groups is set but mqtt\.tls_ca is not"):
        parse_config(_doc({"tls_groups": "X25519"}), tmp_path)
    with pytest.raises(ConfigError, match=r"^mqtt\.tls_cert and mqtt\.tls_key go together"):
        parse_config(_doc({"tls_ca": "/ca.pem", "tls_cert": "c.pem"}), tmp_path)
    with pytest.raises(ConfigError, match=r"^mqtt\.tls_groups = 'no-such-group' is invalid"):
        parse_config(_doc({"tls_ca": "/ca.pem", "tls_groups": "no-such-group"}), tmp_path)
    with pytest.raises(ConfigError, match=r"^mqtt\.tls_ca = '' is invalid"):
        parse_config(_doc({"tls_ca": ""}), tmp_path)


def test_client_context_names_a_missing_ca(tmp_path: Path) -> None:
    with pytest.raises(MqttTlsError, match="cannot load the MQTT TLS files"):
        client_context(MqttTls(tmp_path / "missing.pem"))


def _tls_gateway(root: Path, broker: Mosquitto, pki: BrokerTls, groups: str) -> GatewaySetup:
    """A gateway set up to reach the broker only through its TLS listener, offering `groups`."""
    port = broker.tls_port
    assert port is not None
    setup = make_gateway(root, port)
    text = setup.config_path.read_text()
    setup.config_path.write_text(
        text.replace(
            f"port = {port}\n", f'port = {port}\ntls_ca = "{pki.ca}"\ntls_groups = "{groups}"\n'
        )
    )
    return setup


def _gateway_over_tls(
    tmp_path: Path, broker: Mosquitto, pki: BrokerTls, groups: str
) -> tuple[int, str]:
    """A gateway daemon and three wearables through the TLS listener, both offering only
    `groups`; returns the stored record count and the daemon's log."""
    setup = _tls_gateway(tmp_path / "gw", broker, pki, groups)
    port = broker.tls_port
    assert port is not None
    enroll(setup, 3)
    daemon = DaemonProcess(setup)
    try:
        daemon.wait_connected(60)  # a TLS handshake on a loaded machine
        emulator = EmulatorProcess(
            setup, port, 3, 20, 50.0, "--tls-ca", str(pki.ca), "--tls-groups", groups
        )
        summary = emulator.wait(60)
        assert summary["records_sent"] == 60, summary
        wait_until(lambda: stored_count(setup) == 60, 30, "60 records stored over TLS")
        assert daemon.terminate() == 0
    finally:
        daemon.stop_quietly()
    return stored_count(setup), daemon.log_path.read_text()


def test_broker_tls_with_the_hybrid_group_or_a_clear_error(
    tmp_path: Path, tls_mosquitto: Mosquitto, pki: BrokerTls, capsys: pytest.CaptureFixture[str]
) -> None:
    assert tls_mosquitto.tls_port is not None
    if PQ_TLS:
        # The listener's side, seen by OpenSSL's own client offering only the hybrid group.
        openssl = shutil.which("openssl")
        assert openssl is not None, "openssl (Debian package openssl) is needed here"
        probe = subprocess.run(
            [
                openssl,
                "s_client",
                "-connect",
                f"127.0.0.1:{tls_mosquitto.tls_port}",
                "-CAfile",
                str(pki.ca),
                "-groups",
                HYBRID,
                "-brief",
            ],
            input=b"",
            capture_output=True,
            timeout=30,
            check=False,
        )
        out = (probe.stdout + probe.stderr).decode(errors="replace")
        assert f"Negotiated TLS1.3 group: {HYBRID}" in out, out
        # The clients' side: offering nothing but the hybrid group, they can only complete
        # their handshakes with it; records flow end to end through the TLS listener.
        count, _log = _gateway_over_tls(tmp_path, tls_mosquitto, pki, HYBRID)
        assert count == 60
    else:
        # OpenSSL 3.0.x (Debian 12): the key is refused by name at start, by both clients.
        with pytest.raises(ConfigError) as info:
            parse_config(_doc({"tls_ca": str(pki.ca), "tls_groups": HYBRID}), tmp_path)
        message = str(info.value)
        assert message.startswith(f"mqtt.tls_groups = '{HYBRID}' is invalid: TLS groups")
        assert f"not supported on {ssl.OPENSSL_VERSION}" in message
        assert "ML-KEM groups need OpenSSL 3.5 or newer" in message
        assert ssl.OPENSSL_VERSION.startswith("OpenSSL 3.0.")
        code = emulate_main(
            [
                "run",
                "--keys-dir",
                str(tmp_path),
                "--gateway-pub",
                str(tmp_path / "none.pub"),
                "--devices",
                "1",
                "--tls-ca",
                str(pki.ca),
                "--tls-groups",
                HYBRID,
            ]
        )
        assert code == 2
        assert f"TLS groups '{HYBRID}' are not supported on {ssl.OPENSSL_VERSION}" in (
            capsys.readouterr().err
        )
        # Classical TLS 1.3 to the same listener still works, with the group named.
        count, _log = _gateway_over_tls(tmp_path, tls_mosquitto, pki, "X25519")
        assert count == 60


def test_replayed_recordings_reach_a_tls_only_broker(
    tmp_path: Path, tls_mosquitto: Mosquitto, pki: BrokerTls, capsys: pytest.CaptureFixture[str]
) -> None:
    """`iomt-emulate replay` takes the same --tls-* options as `run`: a replayed patient
    reaches a gateway through the TLS listener, and TLS options without a CA are refused."""
    port = tls_mosquitto.tls_port
    assert port is not None
    groups = HYBRID if PQ_TLS else "X25519"
    wfdb_dir = tmp_path / "wfdb"
    wfdb_dir.mkdir()
    expected = write_record(wfdb_dir)
    setup = _tls_gateway(tmp_path / "gw", tls_mosquitto, pki, groups)
    keys = ["--keys-dir", str(setup.keys_dir)]
    enrolled = ["enroll", "--registry", str(setup.config.registry), *keys]
    assert emulate_main([*enrolled, "--wfdb", str(wfdb_dir), "--prefix", "patient"]) == 0
    replay = ["replay", "--wfdb", str(wfdb_dir), "--prefix", "patient", *keys]
    replay += ["--gateway-pub", str(setup.gateway_pub), "--port", str(port), "--quiet"]
    # a client certificate without a CA to verify the broker against: refused before connecting
    assert emulate_main([*replay, "--tls-cert", str(pki.cert), "--tls-key", str(pki.key)]) == 2
    assert "--tls-cert, --tls-key and --tls-groups need --tls-ca" in capsys.readouterr().err
    daemon = DaemonProcess(setup)
    try:
        daemon.wait_connected(60)
        tls = ["--tls-ca", str(pki.ca), "--tls-groups", groups]
        assert emulate_main([*replay, *tls, "--speed", "1000", "--connect-timeout", "60"]) == 0
        wait_until(
            lambda: beat_count(setup) == len(expected), 60, "every replayed beat stored over TLS"
        )
        assert daemon.terminate() == 0
    finally:
        daemon.stop_quietly()
