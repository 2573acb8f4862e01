"""The agent image the tests deploy (built from agent-image/, as Containerfile builds it) holds
every program the agent runs and every module it imports, and nothing of the CLI's."""

import json

import tether
from tests.e2e.kube import AGENT_IMAGE, one_container, run_pod
from tether.agent.programs import REQUIRED

PROBE = """
import importlib, json, pkgutil, shutil, subprocess, sys
import tether
found = {p: shutil.which(p, path="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
         for p in PROGRAMS}
versions = {p: subprocess.run([p, "-V"], capture_output=True, text=True).stdout.strip()
            for p in ("iptables-nft-save", "iptables-legacy-save", "ss")}
failed = {}
for pkg in ("tether.agent", "tether.protocol", "tether.tunnel"):
    mod = importlib.import_module(pkg)
    for info in pkgutil.walk_packages(mod.__path__, pkg + "."):
        if info.name.endswith("__main__"):
            continue
        try:
            importlib.import_module(info.name)
        except Exception as exc:
            failed[info.name] = repr(exc)
cli = {}
for name in ("click", "pydantic", "aiohttp", "kubernetes_asyncio", "yaml"):
    try:
        importlib.import_module(name)
        cli[name] = True
    except ImportError:
        cli[name] = False
print(json.dumps({"tether": tether.__version__, "file": tether.__file__, "found": found,
                  "versions": versions, "failed": failed, "cli": cli,
                  "debian": open("/etc/debian_version").read().strip(),
                  "python": sys.version.split()[0]}))
"""


def test_agent_image_holds_what_the_agent_runs_and_imports() -> None:
    phase, logs = run_pod(
        "t-agent-image",
        "shop",
        one_container(
            AGENT_IMAGE,
            ["python3", "-c", f"PROGRAMS = {list(REQUIRED)!r}\n{PROBE}"],
            securityContext={"capabilities": {"add": ["NET_ADMIN"]}},
        ),
    )
    assert phase == "Succeeded", logs
    got = json.loads(logs)
    assert got["tether"] == tether.__version__
    assert got["file"].startswith("/usr/local/lib/python3.11/dist-packages/tether/")
    assert got["debian"].startswith("12."), got["debian"]
    assert got["python"].startswith("3.11."), got["python"]
    missing = [p for p, path in got["found"].items() if path is None]
    assert not missing, f"programs the agent runs are missing from the image: {missing}"
    assert "nf_tables" in got["versions"]["iptables-nft-save"]
    assert "legacy" in got["versions"]["iptables-legacy-save"]
    assert "iproute2" in got["versions"]["ss"]
    assert got["failed"] == {}, got["failed"]
    # The agent's requirements only: none of the CLI's dependencies.
    assert not any(got["cli"].values()), got["cli"]
