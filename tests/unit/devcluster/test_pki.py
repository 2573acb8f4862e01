"""Certificates chain to the CA and carry the names the components are checked against."""

import ipaddress
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from devcluster import pki


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_issued_certs_chain_to_ca_with_sans(tmp_path: Path) -> None:
    specs = {s.name: s for s in pki.cluster_certs()}
    pki.ensure_cert(tmp_path, specs["apiserver"])
    pki.ensure_cert(tmp_path, specs["kubelet-client"])
    ca = _load(tmp_path / "ca.crt")
    api = _load(tmp_path / "apiserver.crt")
    pub = ca.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    api.verify_directly_issued_by(ca)
    sans = api.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("198.19.0.1") in sans.get_values_for_type(x509.IPAddress)
    assert "kubernetes.default.svc.cluster.local" in sans.get_values_for_type(x509.DNSName)
    usage = api.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in usage

    node = _load(tmp_path / "kubelet-client.crt")
    assert node.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == (
        "system:node:devcluster"
    )
    assert node.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == (
        "system:nodes"
    )
    assert oct((tmp_path / "apiserver.key").stat().st_mode & 0o777) == "0o600"


def test_existing_certs_are_kept(tmp_path: Path) -> None:
    spec = pki.cluster_certs()[0]
    pki.ensure_cert(tmp_path, spec)
    before = (tmp_path / f"{spec.name}.crt").read_bytes()
    pki.ensure_cert(tmp_path, spec)
    assert (tmp_path / f"{spec.name}.crt").read_bytes() == before


def test_kubeconfig_points_at_cert_files(tmp_path: Path) -> None:
    path = tmp_path / "x.kubeconfig"
    pki.write_kubeconfig(path, tmp_path, "admin", "https://198.18.16.1:6443")
    conf = yaml.safe_load(path.read_text())
    assert conf["clusters"][0]["cluster"]["server"] == "https://198.18.16.1:6443"
    assert conf["users"][0]["user"]["client-key"] == str(tmp_path / "admin.key")
    assert conf["current-context"] == "devcluster"
