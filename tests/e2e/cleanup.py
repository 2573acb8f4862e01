"""Sweeping what tether or a test left in the cluster: at the start of an e2e run (a killed
earlier run may have left objects behind) and when a leftover check fails (so that one failure
stays one instead of failing every test after it)."""

import json
import subprocess
import sys

from tests.e2e.kube import kubectl
from tether.agent.target import TargetNotFound, find_container_pid

AGENT_SELECTOR = "app.kubernetes.io/name=tether-agent"
TEST_NAMESPACE_PREFIX = "tether-e2e-"
IPTABLES_SAVES = ("iptables-nft-save", "iptables-legacy-save")


def agent_objects_everywhere() -> list[str]:
    """`kind/namespace/name` of every tether agent Job, Secret and pod, in any namespace."""
    out = kubectl("get", "jobs,secrets,pods", "-A", "-l", AGENT_SELECTOR, "-o", "json", check=False)
    items = json.loads(out or '{"items": []}')["items"]
    return [
        f"{i['kind']}/{i['metadata']['namespace']}/{i['metadata']['name']}"
        for i in items
        if not i["metadata"].get("deletionTimestamp")
    ]


def _pids_of(namespace: str, app: str) -> list[int]:
    """The main process (on this node) of the first container of each of `app`'s pods."""
    out = kubectl("-n", namespace, "get", "pods", "-l", f"app={app}", "-o", "json", check=False)
    pids = []
    for pod in json.loads(out or '{"items": []}')["items"]:
        for status in pod.get("status", {}).get("containerStatuses", [])[:1]:
            try:
                pids.append(find_container_pid(status.get("containerID", "")))
            except (TargetNotFound, ValueError):
                continue
    return pids


def tether_chains_of(namespace: str, app: str) -> str:
    """The tether rules and chains in the network namespace of `app`'s running pods."""
    found = []
    for pid in _pids_of(namespace, app):
        for save in IPTABLES_SAVES:
            text = subprocess.run(
                ["nsenter", "-t", str(pid), "-n", save], capture_output=True, text=True, check=False
            ).stdout
            found += [f"{save}: {line}" for line in text.splitlines() if "TETHER" in line]
    return "\n".join(found)


def remove_tether_chains_of(namespace: str, app: str) -> None:
    """Remove tether's chains from `app`'s pods, as the next agent would."""
    for pid in _pids_of(namespace, app):
        subprocess.run(
            ["nsenter", "-t", str(pid), "-n", sys.executable, "-c", _REMOVE],
            capture_output=True,
            check=False,
        )


_REMOVE = "from tether.agent.iptables import remove_tether_chains; remove_tether_chains()"


def sweep() -> list[str]:
    """Delete every tether agent object and test namespace; return what was there."""
    found = agent_objects_everywhere()
    for item in found:
        kind, namespace, name = item.split("/")
        kubectl(
            "-n", namespace, "delete", kind.lower(), name, "--ignore-not-found", "--wait=false",
            check=False,
        )  # fmt: skip
    out = kubectl("get", "namespaces", "-o", "jsonpath={.items[*].metadata.name}", check=False)
    for ns in out.split():
        if ns.startswith(TEST_NAMESPACE_PREFIX):
            found.append(f"Namespace/{ns}")
            kubectl("delete", "namespace", ns, "--ignore-not-found", "--wait=false", check=False)
    return found
