"""What the tether agent will rely on: a hostPID pod finds a container's process and reads it."""

import json

from tests.e2e.kube import PYTHON_IMAGE, one_container, ready_pod, run_pod

FIND = """
import json, os, pathlib
cid = os.environ["TARGET_CID"]
pids = []
for entry in pathlib.Path("/proc").iterdir():
    if not entry.name.isdigit():
        continue
    try:
        if cid in (entry / "cgroup").read_text():
            pids.append(int(entry.name))
    except OSError:
        pass
pid = min(pids)
environ = (pathlib.Path(f"/proc/{pid}/environ").read_bytes()).split(b"\\0")
env = dict(e.decode().split("=", 1) for e in environ if b"=" in e)
config = pathlib.Path(f"/proc/{pid}/root/etc/shop/config.yaml").read_text()
print(json.dumps({"pid": pid, "pids": pids, "env": env, "config": config}))
"""


def test_hostpid_pod_reads_target_environ_and_root() -> None:
    target = ready_pod("shop", "frontend")
    cid = target["status"]["containerStatuses"][0]["containerID"].split("://", 1)[1]
    phase, logs = run_pod(
        "t-hostpid",
        "shop",
        {
            "hostPID": True,
            "nodeName": target["spec"]["nodeName"],
            **one_container(
                PYTHON_IMAGE,
                ["python3", "-c", FIND],
                env=[{"name": "TARGET_CID", "value": cid}],
                securityContext={"capabilities": {"add": ["SYS_PTRACE"]}},
            ),
        },
    )
    assert phase == "Succeeded", logs
    got = json.loads(logs)
    assert got["pid"] > 1
    assert got["env"]["SHOP_MODE"] == "staging"
    assert got["env"]["BACKEND_URL"] == "http://backend"
    assert "greeting: hello from the shop's staging config" in got["config"]
