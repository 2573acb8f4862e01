"""A short run of every fuzz harness (fuzz/) under libFuzzer, as CI's smoke check.

Each harness starts from its seed corpus, which also holds the input of every bug found so far,
so this replays those regressions and then fuzzes on for a few seconds. Any crash, invariant
violation, hang or memory blow-up fails the test; `make fuzz` is the long run.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris", reason="atheris is not installed (it comes with the dev extra)")

ROOT = Path(__file__).resolve().parents[2]
HARNESSES = ["protocol", "http1", "http2", "config", "cgroup", "resolv"]
RUNS = 2000
SECONDS = 5


@pytest.mark.parametrize("harness", HARNESSES)
def test_fuzz_harness_finds_nothing(harness: str, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"  # what this run learns; the seeds stay as they are
    corpus.mkdir()
    command = [
        sys.executable,
        "-m",
        f"fuzz.{harness}",
        f"-runs={RUNS}",
        f"-max_total_time={SECONDS}",
        "-rss_limit_mb=2048",
        "-timeout=60",
        f"-artifact_prefix={tmp_path}/",
        str(corpus),
        str(ROOT / "fuzz" / "corpus" / harness),
    ]
    dictionary = ROOT / "fuzz" / f"{harness}.dict"
    if dictionary.exists():
        command.insert(3, f"-dict={dictionary}")
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=180)
    found = sorted(p.name for p in tmp_path.iterdir() if p.name != "corpus")
    tail = "\n".join(result.stderr.splitlines()[-40:])
    assert result.returncode == 0 and not found, f"fuzz.{harness} found {found}:\n{tail}"
    assert "Done " in result.stderr, tail
