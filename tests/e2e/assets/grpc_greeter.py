"""A minimal gRPC server for the e2e tests, run in a pod of the agent image (which has `h2`
but not grpcio): unary /greet.Greeter/Hello answers "pod:<request bytes>" with grpc-status 0,
and plain HTTP/2 GET /healthz answers 200 (the readiness probe's target is TCP anyway).

gRPC is HTTP/2 with each message framed as 1 flag byte + 4 length bytes: that is all a unary
call needs, so the test does not depend on grpcio being installable in the cluster."""

import socket
import struct
import threading

import h2.config
import h2.connection
import h2.events


def serve(conn_sock: socket.socket) -> None:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    conn.initiate_connection()
    conn_sock.sendall(conn.data_to_send())
    bodies: dict[int, bytes] = {}
    paths: dict[int, str] = {}
    while True:
        data = conn_sock.recv(65536)
        if not data:
            return
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                headers = {k.decode(): v.decode() for k, v in event.headers}
                paths[event.stream_id] = headers.get(":path", "")
                bodies[event.stream_id] = b""
            elif isinstance(event, h2.events.DataReceived):
                bodies[event.stream_id] = bodies.get(event.stream_id, b"") + event.data
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                body = bodies.pop(event.stream_id, b"")
                path = paths.pop(event.stream_id, "")
                if path == "/greet.Greeter/Hello":
                    message = b"pod:" + body[5:]
                    conn.send_headers(
                        event.stream_id, [(":status", "200"), ("content-type", "application/grpc")]
                    )
                    conn.send_data(event.stream_id, struct.pack(">BI", 0, len(message)) + message)
                    conn.send_headers(event.stream_id, [("grpc-status", "0")], end_stream=True)
                else:
                    conn.send_headers(
                        event.stream_id,
                        [(":status", "200"), ("content-type", "text/plain")],
                    )
                    conn.send_data(event.stream_id, b"ok\n", end_stream=True)
        out = conn.data_to_send()
        if out:
            conn_sock.sendall(out)


def main() -> None:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("", 50051))
    listener.listen(128)
    print("greeter listening on :50051", flush=True)
    while True:
        sock, _ = listener.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=serve, args=(sock,), daemon=True).start()


if __name__ == "__main__":
    main()
