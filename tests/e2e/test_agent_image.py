"""The locally built agent image runs: tether from the working tree, its deps, iptables."""

import json

from tests.e2e.kube import AGENT_IMAGE, one_container, run_pod

PROBE = """
import json, subprocess, tether, kubernetes_asyncio
ipt = subprocess.run(["iptables", "-V"], capture_output=True, text=True).stdout.strip()
legacy = subprocess.run(["iptables-legacy", "-V"], capture_output=True, text=True).stdout.strip()
print(json.dumps({"tether": tether.__version__, "file": tether.__file__, "ipt": ipt,
                  "legacy": legacy}))
"""


def test_agent_image_has_tether_and_iptables() -> None:
    phase, logs = run_pod(
        "t-agent-image",
        "shop",
        one_container(
            AGENT_IMAGE,
            ["python3", "-c", PROBE],
            securityContext={"capabilities": {"add": ["NET_ADMIN"]}},
        ),
    )
    assert phase == "Succeeded", logs
    got = json.loads(logs)
    import tether

    assert got["tether"] == tether.__version__
    assert got["file"].startswith("/usr/lib/python3/dist-packages/tether/")
    assert "nf_tables" in got["ipt"]
    assert "legacy" in got["legacy"]
