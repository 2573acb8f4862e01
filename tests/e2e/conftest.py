"""The session fixture: the devcluster up (or reused) and the shop deployed."""

from collections.abc import Iterator

import pytest

from tests.e2e.cleanup import sweep
from tests.e2e.kube import KUBECONFIG, deploy_shop, devcluster


@pytest.fixture(scope="session", autouse=True)
def cluster() -> Iterator[str]:
    """Bring the devcluster up (reusing a running one), deploy the shop; yield the kubeconfig."""
    devcluster("up")
    # A killed earlier run may have left agents, Secrets or test namespaces behind.
    swept = sweep()
    if swept:
        print(f"e2e: swept what an earlier run left: {', '.join(swept)}")
    deploy_shop()
    yield str(KUBECONFIG)
