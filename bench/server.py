"""The benchmarks' server, run in a pod: three line-based modes on one port.

`BULK n\n` -> n bytes then close; `SINK n\n` -> reads n bytes, answers `ok\n`;
`ECHO\n` -> echoes each line back (small request latency); on connect it says `hi\n`.
"""

import socket
import threading

CHUNK = b"x" * 65536


def serve(conn: socket.socket) -> None:
    """One client."""
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn.sendall(b"hi\n")
    f = conn.makefile("rb")
    cmd = f.readline().split()
    if cmd and cmd[0] == b"BULK":
        left = int(cmd[1])
        while left > 0:
            n = min(left, len(CHUNK))
            conn.sendall(CHUNK[:n])
            left -= n
    elif cmd and cmd[0] == b"SINK":
        left = int(cmd[1])
        while left > 0 and (data := f.read1(min(left, 262144))):
            left -= len(data)
        conn.sendall(b"ok\n")
    elif cmd and cmd[0] == b"ECHO":
        while line := f.readline():
            conn.sendall(line)
    conn.close()


def main() -> None:
    """Listen on 9000 and serve each client in a thread."""
    srv = socket.create_server(("", 9000), backlog=256)
    print("bench server on :9000", flush=True)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
