"""Target parsing, container choice and label selectors (no cluster)."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client

from tests.unit.kube.pods import fixture_pod
from tether.kube.errors import ContainerNotFoundError, InvalidTargetError
from tether.kube.objects import PodView, label_selector, pod_view
from tether.kube.targets import (
    ResolvedTarget,
    TargetKind,
    TargetSpec,
    detect_mesh,
    parse_target,
    pick_container,
)

POD, DEP, STS = TargetKind.POD, TargetKind.DEPLOYMENT, TargetKind.STATEFULSET


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("pod/web-0", TargetSpec(POD, "web-0")),
        ("pod/web-0/container/app", TargetSpec(POD, "web-0", "app")),
        ("deployment/frontend", TargetSpec(DEP, "frontend")),
        ("deploy/frontend", TargetSpec(DEP, "frontend")),
        ("deployment/frontend/container/frontend", TargetSpec(DEP, "frontend", "frontend")),
        ("statefulset/db", TargetSpec(STS, "db")),
        ("sts/db/container/pg", TargetSpec(STS, "db", "pg")),
        ("Deployment/frontend", TargetSpec(DEP, "frontend")),
        ("  pod/a.b-c  ", TargetSpec(POD, "a.b-c")),
        ("targetless", TargetSpec(TargetKind.TARGETLESS)),
    ],
)
def test_parse_valid(text: str, expected: TargetSpec) -> None:
    assert parse_target(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "frontend",
        "pod",
        "pod/",
        "service/frontend",
        "deployment/frontend/container",
        "deployment/frontend/container/",
        "deployment/frontend/sidecar/x",
        "deployment/Frontend",
        "pod/a/container/b/c",
        "pod/a b",
        "pod/x/container/Bad_Name",
        "targetless/x",
    ],
)
def test_parse_invalid_lists_the_forms(text: str) -> None:
    with pytest.raises(InvalidTargetError) as info:
        parse_target(text)
    message = str(info.value)
    assert message.startswith(f'invalid target "{text}": expected pod/NAME, deployment/NAME')
    assert "targetless" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "text",
    ["pod/x", "deployment/x/container/c", "statefulset/y", "targetless"],
)
def test_str_round_trips(text: str) -> None:
    assert str(parse_target(text)) == text
    assert parse_target(str(parse_target(text))) == parse_target(text)


def test_aliases_print_canonically() -> None:
    assert str(parse_target("sts/db/container/pg")) == "statefulset/db/container/pg"
    assert parse_target("targetless").targetless
    assert not parse_target("deploy/x").targetless


def _pod(containers: list[str]) -> PodView:
    v1 = client.V1Pod(
        metadata=client.V1ObjectMeta(name="p", namespace="ns", uid="u"),
        spec=client.V1PodSpec(
            containers=[client.V1Container(name=c, image=f"img/{c}") for c in containers]
        ),
        status=client.V1PodStatus(phase="Running"),
    )
    return pod_view(v1)


def test_pick_container_skips_mesh_sidecars() -> None:
    assert pick_container(_pod(["istio-proxy", "app", "other"]), None) == "app"
    assert pick_container(_pod(["linkerd-proxy", "envoy", "web"]), None) == "web"
    assert pick_container(_pod(["app"]), None) == "app"
    assert pick_container(_pod(["istio-proxy"]), None) == "istio-proxy"
    assert pick_container(_pod(["app", "istio-proxy"]), "istio-proxy") == "istio-proxy"


def test_pick_container_unknown_names_the_choices() -> None:
    with pytest.raises(ContainerNotFoundError) as info:
        pick_container(_pod(["app", "istio-proxy"]), "nope")
    assert str(info.value) == (
        'container "nope" not found in pod "p" (containers: app, istio-proxy)'
    )


def test_pod_view_reads_statuses() -> None:
    v1 = client.V1Pod(
        metadata=client.V1ObjectMeta(name="p", namespace="ns", uid="u", labels={"a": "b"}),
        spec=client.V1PodSpec(
            node_name="n1", containers=[client.V1Container(name="c", image="img")]
        ),
        status=client.V1PodStatus(
            phase="Running",
            pod_ip="198.18.0.9",
            container_statuses=[
                client.V1ContainerStatus(
                    name="c",
                    ready=True,
                    restart_count=0,
                    image="img",
                    image_id="",
                    container_id="containerd://abc",
                    state=client.V1ContainerState(running=client.V1ContainerStateRunning()),
                )
            ],
        ),
    )
    view = pod_view(v1)
    assert view.ready()
    assert view.node_name == "n1"
    assert view.pod_ip == "198.18.0.9"
    assert view.statuses["c"].container_id == "containerd://abc"
    assert view.statuses["c"].state == "running"
    assert view.images == {"c": "img"}
    assert not _pod(["c"]).ready(), "no container status: not ready"


def test_label_selector_string() -> None:
    sel = client.V1LabelSelector(
        match_labels={"app": "web", "tier": "fe"},
        match_expressions=[
            client.V1LabelSelectorRequirement(key="env", operator="In", values=["a", "b"]),
            client.V1LabelSelectorRequirement(key="x", operator="NotIn", values=["c"]),
            client.V1LabelSelectorRequirement(key="y", operator="Exists"),
            client.V1LabelSelectorRequirement(key="z", operator="DoesNotExist"),
        ],
    )
    assert label_selector(sel) == "app=web,tier=fe,env in (a,b),x notin (c),y,!z"


def test_resolved_target_describe() -> None:
    target = ResolvedTarget(
        kind=DEP,
        name="frontend",
        namespace="shop",
        pod_name="frontend-1",
        pod_uid="u",
        node_name="node1",
        container_name="frontend",
        container_id="containerd://abc",
        pod_ip=None,
    )
    assert target.describe() == (
        "deployment/frontend -> pod frontend-1 container frontend in namespace shop on node node1"
    )


FIXTURES = Path(__file__).with_name("fixtures")


def test_a_native_sidecar_is_a_sidecar() -> None:
    pod = fixture_pod("pod-native-sidecar-1.30.json")
    assert pod.sidecars == ["istio-proxy"]
    assert pod.init_containers == ["istio-init"]
    assert pod.statuses["istio-proxy"].state == "running"
    assert pod.statuses["istio-proxy"].container_id == "containerd://bbb222"
    # Named explicitly it can be the target; it is never the default.
    assert pick_container(pod, "istio-proxy") == "istio-proxy"
    assert detect_mesh(pod) == "istio"


def _drop_annotation(data: dict[str, Any]) -> None:
    del data["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"]


def _no_istio(data: dict[str, Any]) -> None:
    del data["metadata"]["annotations"]["sidecar.istio.io/status"]
    data["spec"]["initContainers"] = [{"name": "migrate", "image": "app:1"}]
    data["status"]["initContainerStatuses"] = []


@pytest.mark.parametrize(
    ("edit", "chosen", "mesh"),
    [
        # kubectl's default-container annotation is honoured over the first container.
        (None, "reviews", "istio"),
        # Without it: the first regular container (a native sidecar is not one).
        (_drop_annotation, "log-shipper", "istio"),
        (_no_istio, "reviews", None),
    ],
)
def test_default_container_and_mesh(
    edit: Callable[[dict[str, Any]], None] | None, chosen: str, mesh: str | None
) -> None:
    pod = fixture_pod("pod-native-sidecar-1.30.json", edit)
    assert pick_container(pod, None) == chosen
    assert detect_mesh(pod) == mesh


def test_an_annotation_naming_no_container_is_ignored() -> None:
    def bad(data: dict[str, Any]) -> None:
        data["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"] = "gone"

    assert pick_container(fixture_pod("pod-native-sidecar-1.30.json", bad), None) == ("log-shipper")


def test_the_sidecar_annotation_alone_reveals_the_mesh() -> None:
    def only_annotation(data: dict[str, Any]) -> None:
        data["spec"]["initContainers"] = []
        data["status"]["initContainerStatuses"] = []

    assert detect_mesh(fixture_pod("pod-native-sidecar-1.30.json", only_annotation)) == "istio"
