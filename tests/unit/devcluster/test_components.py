"""Component command lines and configs carry the flags the cluster depends on."""

import ipaddress

from devcluster import components, layout, procs


def _flags(argv: list[str]) -> dict[str, str]:
    return dict(a[2:].split("=", 1) for a in argv if a.startswith("--") and "=" in a)


def test_apiserver_uses_guarded_ranges_and_feature_gates() -> None:
    flags = _flags(components.apiserver().argv)
    assert flags["service-cluster-ip-range"] == "198.19.0.0/20"
    assert flags["bind-address"] == str(layout.NODE_IP)
    assert flags["insecure-port"] == "0"
    assert "EphemeralContainers=true" in flags["feature-gates"]
    assert "TTLAfterFinished=true" in flags["feature-gates"]


def test_apiserver_admits_pods_through_pod_security_policies() -> None:
    flags = _flags(components.apiserver().argv)
    plugins = flags["enable-admission-plugins"].split(",")
    assert plugins == ["NodeRestriction", "PodSecurityPolicy"]
    assert flags["allow-privileged"] == "true"


def test_every_address_is_inside_the_guarded_range() -> None:
    for net in (layout.POD_CIDR, layout.SERVICE_CIDR, layout.NODE_NET):
        assert net.subnet_of(layout.GUARD_NET)  # type: ignore[arg-type]
    for ip in (layout.NODE_IP, layout.POD_GATEWAY, layout.API_SERVICE_IP, layout.DNS_SERVICE_IP):
        assert ip in layout.GUARD_NET
    assert not layout.POD_CIDR.overlaps(layout.SERVICE_CIDR)
    assert next(layout.SERVICE_CIDR.hosts()) == layout.API_SERVICE_IP


def test_pods_get_no_default_route_and_no_masquerade() -> None:
    bridge = components.cni_config()["plugins"][0]
    assert bridge["ipMasq"] is False
    routes = bridge["ipam"]["routes"]
    assert routes == [{"dst": "198.18.0.0/15"}]
    assert all(ipaddress.ip_network(r["dst"]) != ipaddress.ip_network("0.0.0.0/0") for r in routes)


def test_kubelet_never_inherits_the_hosts_resolver() -> None:
    conf = components.kubelet_config()
    assert conf["clusterDNS"] == ["198.19.0.10"]
    assert conf["clusterDomain"] == "cluster.local"
    kubelet = components.kubelet()
    resolv = kubelet.files[layout.CONF / "node-resolv.conf"]
    assert resolv.strip() == "nameserver 198.19.0.10"
    assert conf["cgroupDriver"] == "cgroupfs"


def test_containerd_restricts_oom_score_and_uses_local_sandbox_image() -> None:
    text = components.containerd_config()
    assert "restrict_oom_score_adj = true" in text
    assert f'sandbox_image = "{layout.PAUSE_IMAGE}"' in text
    assert "SystemdCgroup = false" in text


def test_kube_proxy_leaves_conntrack_sysctls_alone() -> None:
    conf = components.kube_proxy_config()
    assert conf["mode"] == "iptables"
    assert conf["conntrack"]["maxPerCore"] == 0
    assert conf["nodePortAddresses"] == [f"{layout.NODE_IP}/32"]


def test_components_run_without_cloud_metadata_or_a_live_proxy() -> None:
    env = procs.component_env()
    assert env["AWS_EC2_METADATA_DISABLED"] == "true"
    for key in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        assert env[key].startswith("http://127.0.0.1:")
    assert "198.18.0.0/15" in env["NO_PROXY"].split(",")
