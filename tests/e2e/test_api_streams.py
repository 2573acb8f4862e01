"""Exec and port-forward through the API server, with the client library tether uses."""

import asyncio
import json
from typing import Any

from kubernetes_asyncio import client, config
from kubernetes_asyncio.stream import WsApiClient

from tests.e2e.kube import KUBECONFIG, ready_pod


async def _load() -> None:
    await config.load_kube_config(config_file=str(KUBECONFIG))


async def test_exec_returns_output() -> None:
    await _load()
    pod = ready_pod("shop", "frontend")["metadata"]["name"]
    async with WsApiClient() as ws:
        # The generated stubs type exec/port-forward for plain REST; over a WsApiClient they
        # return text and a WebSocket.
        api: Any = client.CoreV1Api(api_client=ws)
        out = await api.connect_get_namespaced_pod_exec(
            pod,
            "shop",
            command=["sh", "-c", "echo $SHOP_MODE; cat /etc/shop/config.yaml"],
            stderr=True,
            stdout=True,
            stdin=False,
            tty=False,
        )
    assert "staging" in out
    assert "currency: EUR" in out


async def _portforward_http(pod: str, port: int, request: bytes) -> bytes:
    async with WsApiClient() as ws_client:
        api: Any = client.CoreV1Api(api_client=ws_client)
        connecting = await api.connect_get_namespaced_pod_portforward(
            pod, "shop", ports=str(port), _preload_content=False
        )
        async with connecting as ws:
            # v4.channel.k8s.io: the server first names the port on each channel (3 bytes each);
            # our frames are the channel byte + payload, with no port prefix.
            await ws.send_bytes(b"\x00" + request)
            data = b""
            headers_done = False
            length = -1
            while True:
                msg = await asyncio.wait_for(ws.receive(), timeout=10)
                if msg.type.name != "BINARY":
                    break
                payload = msg.data
                if payload[0] == 1 and len(payload) > 3:
                    raise AssertionError(f"port-forward error: {payload[1:]!r}")
                if payload[0] != 0:
                    continue
                chunk = payload[1:]
                if not headers_done and len(chunk) == 2 and not data:
                    continue  # the initial port announcement
                data += bytes(chunk)
                if not headers_done and b"\r\n\r\n" in data:
                    headers_done = True
                    head = data.split(b"\r\n\r\n", 1)[0].decode()
                    for line in head.split("\r\n")[1:]:
                        name, _, value = line.partition(":")
                        if name.lower() == "content-length":
                            length = int(value)
                if headers_done and length >= 0:
                    body = data.split(b"\r\n\r\n", 1)[1]
                    if len(body) >= length:
                        return data
    return data


async def test_portforward_carries_http_request() -> None:
    await _load()
    pod = ready_pod("shop", "backend")["metadata"]["name"]
    request = b"GET /pf HTTP/1.1\r\nHost: backend\r\nX-Via: portforward\r\n\r\n"
    raw = await _portforward_http(pod, 8080, request)
    head, body = raw.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200"), head
    answer = json.loads(body)
    assert answer["pod"] == pod
    assert answer["path"] == "/pf"
    assert answer["headers"]["X-Via"] == "portforward"
