"""The cluster's CA, component certificates, service-account keys and kubeconfigs.

Uses `cryptography`; files are written once and reused, so a restarted cluster keeps its
identity and existing kubeconfigs stay valid.
"""

import datetime
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from devcluster import layout

_VALIDITY = datetime.timedelta(days=3650)
_IP = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class CertSpec:
    """A certificate to issue from the cluster CA."""

    name: str
    common_name: str
    organization: str | None = None
    server: bool = False
    client: bool = True
    dns_names: tuple[str, ...] = ()
    ips: tuple[_IP, ...] = field(default_factory=tuple)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _name(cn: str, org: str | None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def ensure_ca(pki: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Load the CA, creating it on first use."""
    crt_path, key_path = pki / "ca.crt", pki / "ca.key"
    if crt_path.exists() and key_path.exists():
        cert = x509.load_pem_x509_certificate(crt_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return cert, key
    pki.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    name = _name("tether-devcluster-ca", None)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    _write_key(key_path, key)
    crt_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def ensure_cert(pki: Path, spec: CertSpec) -> None:
    """Issue `spec` from the CA unless a certificate with that name already exists."""
    crt_path, key_path = pki / f"{spec.name}.crt", pki / f"{spec.name}.key"
    if crt_path.exists() and key_path.exists():
        return
    ca_cert, ca_key = ensure_ca(pki)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    usages = []
    if spec.server:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if spec.client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(spec.common_name, spec.organization))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    )
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in spec.dns_names]
    sans += [x509.IPAddress(ip) for ip in spec.ips]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    _write_key(key_path, key)
    crt_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def ensure_service_account_keys(pki: Path) -> None:
    """The key pair that signs service-account tokens."""
    key_path, pub_path = pki / "sa.key", pki / "sa.pub"
    if key_path.exists() and pub_path.exists():
        return
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write_key(key_path, key)
    pub_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def cluster_certs() -> list[CertSpec]:
    """Every certificate the control plane, the node and the admin need."""
    api_names = (
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        f"kubernetes.default.svc.{layout.CLUSTER_DOMAIN}",
        "localhost",
        layout.NODE_NAME,
    )
    loopback = ipaddress.ip_address("127.0.0.1")
    return [
        CertSpec(
            "apiserver",
            "kube-apiserver",
            server=True,
            client=False,
            dns_names=api_names,
            ips=(loopback, layout.NODE_IP, layout.API_SERVICE_IP),
        ),
        CertSpec("apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters"),
        CertSpec("admin", "devcluster-admin", "system:masters"),
        CertSpec("controller-manager", "system:kube-controller-manager"),
        CertSpec("scheduler", "system:kube-scheduler"),
        CertSpec("kube-proxy", "system:kube-proxy"),
        CertSpec("kubelet-client", f"system:node:{layout.NODE_NAME}", "system:nodes"),
        CertSpec(
            "kubelet-server",
            f"system:node:{layout.NODE_NAME}",
            server=True,
            client=False,
            dns_names=(layout.NODE_NAME, "localhost"),
            ips=(loopback, layout.NODE_IP),
        ),
    ]


def write_kubeconfig(path: Path, pki: Path, cert_name: str, server: str) -> None:
    """A kubeconfig authenticating with `cert_name`'s client certificate."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "devcluster",
                "cluster": {
                    "server": server,
                    "certificate-authority": str(pki / "ca.crt"),
                },
            }
        ],
        "users": [
            {
                "name": cert_name,
                "user": {
                    "client-certificate": str(pki / f"{cert_name}.crt"),
                    "client-key": str(pki / f"{cert_name}.key"),
                },
            }
        ],
        "contexts": [
            {
                "name": "devcluster",
                "context": {"cluster": "devcluster", "user": cert_name, "namespace": "default"},
            }
        ],
        "current-context": "devcluster",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)


def ensure_pki() -> None:
    """Create every certificate, key and kubeconfig that is missing."""
    pki = layout.PKI
    ensure_ca(pki)
    for spec in cluster_certs():
        ensure_cert(pki, spec)
    ensure_service_account_keys(pki)
    server = f"https://{layout.NODE_IP}:{layout.API_PORT}"
    for name in ("controller-manager", "scheduler", "kube-proxy", "kubelet-client"):
        write_kubeconfig(layout.CONF / f"{name}.kubeconfig", pki, name, server)
    write_kubeconfig(layout.ADMIN_KUBECONFIG, pki, "admin", server)
