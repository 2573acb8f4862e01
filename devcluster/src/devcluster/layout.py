"""Where the devcluster keeps things, and the addresses it uses.

Everything lives outside the repository so that any checkout (a CI clone included) reuses the
same built binaries and the same running cluster.
"""

import ipaddress
import os
from pathlib import Path

K8S_VERSION = "v1.20.2"

STATE = Path(os.environ.get("DEVCLUSTER_STATE", "/var/lib/tether-devcluster"))
CACHE = Path(os.environ.get("DEVCLUSTER_CACHE", "/var/cache/tether-devcluster"))

PKI = STATE / "pki"
CONF = STATE / "config"
LOGS = STATE / "logs"
PIDS = STATE / "run"
ETCD_DATA = STATE / "etcd"
CNI_CONF_DIR = STATE / "cni"
ADMIN_KUBECONFIG = STATE / "admin.kubeconfig"

K8S_BIN = CACHE / "kubernetes" / K8S_VERSION / "bin"
LAYERS = CACHE / "layers"
IMAGES = CACHE / "images"

# Paths fixed by the tools themselves (kubelet 1.20 hard-codes some; containerd's CNI cache).
KUBELET_ROOT = Path("/var/lib/kubelet")
CONTAINERD_SOCK = Path("/run/containerd/containerd.sock")
CONTAINERD_ROOT = Path("/var/lib/containerd")
CONTAINERD_STATE = Path("/run/containerd")
CNI_STATE = Path("/var/lib/cni")
NETNS_DIR = Path("/var/run/netns")
CNI_BIN_DIR = Path("/usr/lib/cni")

NODE_NAME = "devcluster"
CLUSTER_DOMAIN = "cluster.local"

# Network: every address the cluster uses is inside 198.18.0.0/15 (RFC 2544 benchmarking
# space), which a blackhole route keeps from ever leaving the machine.
GUARD_NET = ipaddress.ip_network("198.18.0.0/15")
POD_CIDR = ipaddress.ip_network("198.18.0.0/20")
POD_GATEWAY = ipaddress.ip_address("198.18.0.1")
NODE_NET = ipaddress.ip_network("198.18.16.0/24")
NODE_IP = ipaddress.ip_address("198.18.16.1")
SERVICE_CIDR = ipaddress.ip_network("198.19.0.0/20")
API_SERVICE_IP = ipaddress.ip_address("198.19.0.1")
DNS_SERVICE_IP = ipaddress.ip_address("198.19.0.10")

POD_BRIDGE = "tdc-pods"
NODE_BRIDGE = "tdc-node"
CNI_NETWORK = "tdc-pods"

API_PORT = 6443
ETCD_PORT = 2379
# Health endpoints on loopback (the scheduler's and controller-manager's are their defaults).
KUBELET_HEALTHZ_PORT = 10248
KUBE_PROXY_HEALTHZ_PORT = 10256
SCHEDULER_PORT = 10259
CONTROLLER_MANAGER_PORT = 10257
# The node's DNS server listens on this port; the kube-dns Service maps port 53 onto it.
DNS_PORT = 53

# Local image names (never pulled: the sandbox image and every devcluster image are imported).
PAUSE_IMAGE = "docker.io/tether-devcluster/pause:1"
BUSYBOX_IMAGE = "docker.io/tether-devcluster/busybox:1"
PYTHON_IMAGE = "docker.io/tether-devcluster/python:3.11"
AGENT_IMAGE = "docker.io/tether/agent:dev"
