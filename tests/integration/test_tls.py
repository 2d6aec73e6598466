"""DICOM TLS against DCMTK storescp +tls, with certificates made by the tests."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path
from typing import Any

import pydicom
import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydicom.data import get_testdata_file

from e2e_support import load_receivers
from engine import ConnectionFailedError, StoreScu
from engine.cli import main

receivers = load_receivers()
CT_SMALL = Path(get_testdata_file("CT_small.dcm", download=False))


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: Any, path: Path) -> None:
    path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))


def _certificate(subject: str, key: Any, issuer: str, issuer_key: Any,
                 is_ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None),
                       critical=True)
    )
    if not is_ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
        ]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _make_ca(folder: Path, name: str) -> tuple[Path, Any]:
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = _certificate(name, key, name, key, is_ca=True)
    path = folder / f"{name}.pem"
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return path, key


def _make_leaf(folder: Path, name: str, ca_name: str, ca_key: Any) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = _certificate(name, key, ca_name, ca_key, is_ca=False)
    cert_path = folder / f"{name}.pem"
    key_path = folder / f"{name}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    _write_key(key, key_path)
    return cert_path, key_path


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    """A CA that signs the receiver's and our certificates, and a stranger CA."""
    folder = tmp_path / "pki"
    folder.mkdir()
    ca, ca_key = _make_ca(folder, "test-ca")
    other_ca, _ = _make_ca(folder, "other-ca")
    server_cert, server_key = _make_leaf(folder, "receiver", "test-ca", ca_key)
    client_cert, client_key = _make_leaf(folder, "sender", "test-ca", ca_key)
    return {"ca": ca, "other_ca": other_ca, "server_cert": server_cert,
            "server_key": server_key, "client_cert": client_cert,
            "client_key": client_key}


@pytest.fixture
def tls_storescp(tmp_path: Path, pki: dict[str, Path]) -> Any:
    out_dir = tmp_path / "received"
    out_dir.mkdir()
    with receivers.start_storescp(
        out_dir, "+xa", "+tls", str(pki["server_key"]), str(pki["server_cert"]),
        "+cf", str(pki["ca"]),
    ) as scp:
        yield scp


def test_tls_send_with_trusted_certificates(tls_storescp: Any,
                                            pki: dict[str, Path]) -> None:
    scu = StoreScu(f"127.0.0.1:{tls_storescp.port}", tls_ca_file=pki["ca"],
                   tls_cert_file=pki["client_cert"], tls_key_file=pki["client_key"])
    scu.add_file(CT_SMALL)

    result = scu.send()

    assert (result.successful, result.failed) == (1, 0)
    received = list(tls_storescp.out_dir.iterdir())
    assert len(received) == 1
    sent = pydicom.dcmread(CT_SMALL)
    arrived = pydicom.dcmread(received[0])
    assert arrived.SOPInstanceUID == sent.SOPInstanceUID
    assert arrived.PixelData == sent.PixelData


def test_tls_wrong_ca_is_refused(tls_storescp: Any, pki: dict[str, Path]) -> None:
    scu = StoreScu(f"127.0.0.1:{tls_storescp.port}", tls_ca_file=pki["other_ca"],
                   tls_cert_file=pki["client_cert"], tls_key_file=pki["client_key"],
                   connect_timeout=10)
    scu.add_file(CT_SMALL)

    with pytest.raises(ConnectionFailedError, match=(
            r"could not establish association with 127\.0\.0\.1:\d+ \(TLS: the "
            r"receiver's certificate was not accepted: .*certificate")):
        scu.send()
    assert list(tls_storescp.out_dir.iterdir()) == []


def test_tls_without_our_certificate_fails(tls_storescp: Any,
                                          pki: dict[str, Path]) -> None:
    scu = StoreScu(f"127.0.0.1:{tls_storescp.port}", tls_ca_file=pki["ca"],
                   connect_timeout=10)
    scu.add_file(CT_SMALL)

    with pytest.raises(ConnectionFailedError,
                       match="could not establish association with 127.0.0.1"):
        scu.send()
    assert list(tls_storescp.out_dir.iterdir()) == []


def test_tls_echo_from_cli(tls_storescp: Any, pki: dict[str, Path]) -> None:
    result = CliRunner().invoke(main, [
        "echo", f"127.0.0.1:{tls_storescp.port}", "--tls-ca", str(pki["ca"]),
        "--tls-cert", str(pki["client_cert"]), "--tls-key", str(pki["client_key"]),
    ])

    assert result.exit_code == 0, result.output
    assert "Success (0x0000)" in result.output


def test_tls_missing_file_is_usage_error(pki: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Invalid tls_ca_file '.*nope.pem': the "
                                         "file does not exist"):
        StoreScu("127.0.0.1:104", tls_ca_file=tmp_path / "nope.pem")
    with pytest.raises(ValueError, match="Invalid tls_key_file: a private key "
                                         "needs its certificate"):
        StoreScu("127.0.0.1:104", tls_key_file=pki["client_key"])
