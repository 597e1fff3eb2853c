"""Credentials of a local Flower deployment, made with ``cryptography`` (docs/flower.md):

* a local certificate authority and the SuperLink's TLS certificate for ``127.0.0.1`` and
  ``localhost`` (EC P-384, PEM; the key in PKCS#8), so Fleet, Control and Runtime traffic is
  encrypted and a SuperNode or ``flwr`` CLI without the CA cannot connect;
* one authentication key pair per SuperNode (EC P-384 in OpenSSH format: the private key for
  ``flower-supernode --auth-supernode-private-key``, the public key line for ``flwr supernode
  register``), so that only registered devices join a SuperLink started with
  ``--enable-supernode-auth``.

Made fresh by the deployment command in its work folder and never committed. Certificates are
valid for 30 days from now.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID_DAYS = 30


@dataclass(frozen=True)
class TLSFiles:
    """``ca`` (the CA certificate clients trust), ``cert`` and ``key`` of the SuperLink."""

    ca: Path
    cert: Path
    key: Path


def _write(path: Path, data: bytes, private: bool = False) -> Path:
    path.write_bytes(data)
    if private:
        path.chmod(0o600)
    return path


def make_tls(folder: str | Path, hosts: tuple[str, ...] = ("localhost", "127.0.0.1")) -> TLSFiles:
    """A self-signed CA and a server certificate it signs for ``hosts`` (names or IPs), written to
    ``folder`` as ``ca.crt``, ``server.pem`` and ``server.key``."""
    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=VALID_DAYS)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tsfa local CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, key_cert_sign=True, crl_sign=True,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    names = []
    for h in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    return TLSFiles(
        _write(d / "ca.crt", ca.public_bytes(pem)),
        _write(d / "server.pem", cert.public_bytes(pem)),
        _write(d / "server.key", key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()), private=True))


def make_node_key(folder: str | Path, name: str) -> tuple[Path, Path]:
    """A SuperNode's key pair: ``folder/name`` (OpenSSH private key) and ``folder/name.pub``
    (one ``ecdsa-sha2-nistp384 ...`` line)."""
    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    k = ec.generate_private_key(ec.SECP384R1())
    private = _write(d / name, k.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.OpenSSH,
                                               serialization.NoEncryption()), private=True)
    public = _write(d / f"{name}.pub", k.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))
    return private, public


__all__ = ["TLSFiles", "make_tls", "make_node_key"]
