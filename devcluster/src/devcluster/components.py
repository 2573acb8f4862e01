"""Command lines and configuration files of each cluster component (pure: no I/O here).

The flags are the ones that mattered for v1.20 on these machines; see shared/notes/devcluster.md.
"""

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devcluster import layout

FEATURE_GATES = "EphemeralContainers=true,TTLAfterFinished=true"


@dataclass(frozen=True)
class Component:
    """A daemon: its name, argv, and the files to write before it starts."""

    name: str
    argv: list[str]
    files: dict[Path, str]


def _bin(name: str) -> str:
    return str(layout.K8S_BIN / name)


def etcd() -> Component:
    """etcd, on loopback only."""
    url = f"http://127.0.0.1:{layout.ETCD_PORT}"
    peer = "http://127.0.0.1:2380"
    return Component(
        "etcd",
        [
            "/usr/bin/etcd",
            "--name=devcluster",
            f"--data-dir={layout.ETCD_DATA}",
            f"--listen-client-urls={url}",
            f"--advertise-client-urls={url}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=devcluster={peer}",
            "--listen-metrics-urls=http://127.0.0.1:2381",
            "--snapshot-count=10000",
        ],
        {},
    )


def containerd_config() -> str:
    """containerd's TOML: CRI with our CNI, cgroupfs runc, no OOM-score privileges."""
    return f"""version = 2
root = "{layout.CONTAINERD_ROOT}"
state = "{layout.CONTAINERD_STATE}"

[grpc]
  address = "{layout.CONTAINERD_SOCK}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{layout.PAUSE_IMAGE}"
  # The VM withholds CAP_SYS_RESOURCE; pause asks for oom_score_adj -998 otherwise.
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{layout.CNI_BIN_DIR}"
    conf_dir = "{layout.CNI_CONF_DIR}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
"""


def containerd() -> Component:
    """containerd with the CRI plugin, at the standard socket."""
    conf = layout.CONF / "containerd.toml"
    return Component(
        "containerd",
        ["/usr/bin/containerd", f"--config={conf}"],
        {conf: containerd_config()},
    )


def cni_config() -> dict[str, Any]:
    """Bridge CNI with host-local IPAM; pods get a route only for the guarded range."""
    return {
        "cniVersion": "0.4.0",
        "name": layout.CNI_NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": layout.POD_BRIDGE,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [
                        [{"subnet": str(layout.POD_CIDR), "gateway": str(layout.POD_GATEWAY)}]
                    ],
                    # No default route: a pod can reach the cluster range and nothing else.
                    "routes": [{"dst": str(layout.GUARD_NET)}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def apiserver() -> Component:
    """kube-apiserver bound to the node IP only."""
    pki = layout.PKI
    return Component(
        "kube-apiserver",
        [
            _bin("kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{layout.ETCD_PORT}",
            f"--bind-address={layout.NODE_IP}",
            f"--advertise-address={layout.NODE_IP}",
            f"--secure-port={layout.API_PORT}",
            "--insecure-port=0",
            f"--service-cluster-ip-range={layout.SERVICE_CIDR}",
            "--allow-privileged=true",
            "--authorization-mode=Node,RBAC",
            # PodSecurityPolicy refuses privileged pods outside the namespaces granted them
            # (policy.py); `up` applies the policies before any workload pod is created.
            "--enable-admission-plugins=NodeRestriction,PodSecurityPolicy",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
            f"--kubelet-certificate-authority={pki / 'ca.crt'}",
            "--kubelet-preferred-address-types=InternalIP",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-account-issuer=https://kubernetes.default.svc.{layout.CLUSTER_DOMAIN}",
            f"--feature-gates={FEATURE_GATES}",
            "--profiling=false",
            "--v=1",
        ],
        {},
    )


def _control_loop(name: str, kubeconfig: Path, *extra: str) -> Component:
    """controller-manager and scheduler share their identity, binding and leader flags."""
    return Component(
        name,
        [
            _bin(name),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            "--port=0",
            "--leader-elect=false",
            f"--feature-gates={FEATURE_GATES}",
            "--profiling=false",
            "--v=1",
            *extra,
        ],
        {},
    )


def controller_manager() -> Component:
    """kube-controller-manager, signing with the cluster CA."""
    pki = layout.PKI
    return _control_loop(
        "kube-controller-manager",
        layout.CONF / "controller-manager.kubeconfig",
        "--use-service-account-credentials=true",
        "--allocate-node-cidrs=false",
        f"--service-cluster-ip-range={layout.SERVICE_CIDR}",
        f"--service-account-private-key-file={pki / 'sa.key'}",
        f"--root-ca-file={pki / 'ca.crt'}",
        f"--cluster-signing-cert-file={pki / 'ca.crt'}",
        f"--cluster-signing-key-file={pki / 'ca.key'}",
        "--controllers=*,-cloud-node-lifecycle",
    )


def scheduler() -> Component:
    """kube-scheduler."""
    return _control_loop("kube-scheduler", layout.CONF / "scheduler.kubeconfig")


def kubelet_config() -> dict[str, Any]:
    """KubeletConfiguration for containerd's CRI on a cgroup-v1, no-swap-check VM."""
    pki = layout.PKI
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": str(layout.NODE_IP),
        "healthzBindAddress": "127.0.0.1",
        # Explicit (it is the default): `devcluster restart kubelet` probes this port.
        "healthzPort": layout.KUBELET_HEALTHZ_PORT,
        "readOnlyPort": 0,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(pki / "ca.crt")},
        },
        "authorization": {"mode": "Webhook"},
        "tlsCertFile": str(pki / "kubelet-server.crt"),
        "tlsPrivateKeyFile": str(pki / "kubelet-server.key"),
        "clusterDNS": [str(layout.DNS_SERVICE_IP)],
        "clusterDomain": layout.CLUSTER_DOMAIN,
        # The host's resolv.conf names an off-machine server; pods must never inherit it.
        "resolvConf": str(layout.CONF / "node-resolv.conf"),
        "cgroupDriver": "cgroupfs",
        "failSwapOn": False,
        "evictionHard": {
            "memory.available": "50Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
            "nodefs.inodesFree": "1%",
        },
        # Images are imported, never pulled: garbage-collecting one would break the cluster.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "featureGates": {"EphemeralContainers": True},
        "serializeImagePulls": False,
        "maxPods": 110,
    }


def kubelet() -> Component:
    """kubelet on containerd's CRI."""
    conf = layout.CONF / "kubelet.yaml"
    resolv = layout.CONF / "node-resolv.conf"
    return Component(
        "kubelet",
        [
            _bin("kubelet"),
            f"--config={conf}",
            f"--kubeconfig={layout.CONF / 'kubelet-client.kubeconfig'}",
            "--container-runtime=remote",
            f"--container-runtime-endpoint=unix://{layout.CONTAINERD_SOCK}",
            f"--node-ip={layout.NODE_IP}",
            f"--hostname-override={layout.NODE_NAME}",
            f"--pod-infra-container-image={layout.PAUSE_IMAGE}",
            "--v=1",
        ],
        {
            conf: json.dumps(kubelet_config(), indent=2),
            resolv: f"nameserver {layout.DNS_SERVICE_IP}\n",
        },
    )


def kube_proxy_config() -> dict[str, Any]:
    """KubeProxyConfiguration: iptables mode, conntrack sysctls left alone."""
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(layout.CONF / "kube-proxy.kubeconfig")},
        "mode": "iptables",
        "clusterCIDR": str(layout.POD_CIDR),
        "hostnameOverride": layout.NODE_NAME,
        "bindAddress": str(layout.NODE_IP),
        "nodePortAddresses": [f"{layout.NODE_IP}/32"],
        "metricsBindAddress": "127.0.0.1:10249",
        "healthzBindAddress": f"127.0.0.1:{layout.KUBE_PROXY_HEALTHZ_PORT}",
        # The VM forbids changing the host's conntrack sysctls: zero means "don't touch".
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
    }


def kube_proxy() -> Component:
    """kube-proxy in iptables mode."""
    conf = layout.CONF / "kube-proxy.yaml"
    return Component(
        "kube-proxy",
        [_bin("kube-proxy"), f"--config={conf}", "--v=1"],
        {conf: json.dumps(kube_proxy_config(), indent=2)},
    )


def dns(python: str) -> Component:
    """The cluster DNS server (devcluster.dns) on the node IP; kube-dns maps onto it."""
    return Component(
        "cluster-dns",
        [
            python,
            "-m",
            "devcluster.dns",
            f"--kubeconfig={layout.ADMIN_KUBECONFIG}",
            f"--listen={layout.NODE_IP}",
            f"--port={layout.DNS_PORT}",
            f"--domain={layout.CLUSTER_DOMAIN}",
        ],
        {},
    )


def for_daemon(name: str, python: str) -> Component:
    """The component `up` starts under the daemon name `name` (see cluster.ORDER); `restart`
    starts exactly this too. `python` runs the cluster DNS server."""
    factories: dict[str, Callable[[], Component]] = {
        "etcd": etcd,
        "containerd": containerd,
        "kube-apiserver": apiserver,
        "kube-controller-manager": controller_manager,
        "kube-scheduler": scheduler,
        "kubelet": kubelet,
        "kube-proxy": kube_proxy,
        "cluster-dns": lambda: dns(python),
    }
    try:
        factory = factories[name]
    except KeyError:
        raise ValueError(f"no component named {name!r}") from None
    return factory()
