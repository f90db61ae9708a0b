"""Network namespaces for the test hosts: a host's sshd and its bhyve guests live in their
own namespaces, so a guest is reachable only through its host (never on a real interface).

`forward` bridges 127.0.0.1:PORT of the test's own namespace to an address inside one:
the listening socket is made here and handed to a small process running in the namespace,
which connects there for every client.
"""

from __future__ import annotations

import socket
import subprocess
import sys

FORWARDER = r"""
import socket, sys, threading
listener = socket.socket(fileno=int(sys.argv[1]))
target = (sys.argv[2], int(sys.argv[3]))

def pipe(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

while True:
    client, _ = listener.accept()
    try:
        server = socket.create_connection(target, timeout=10)
        server.settimeout(None)
    except OSError:
        client.close()
        continue
    threading.Thread(target=pipe, args=(client, server), daemon=True).start()
    threading.Thread(target=pipe, args=(server, client), daemon=True).start()
"""


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def add_netns(name: str) -> None:
    ip("netns", "add", name)
    ip("-n", name, "link", "set", "lo", "up")


def del_netns(name: str) -> None:
    """Remove NAME (its veth ends go with it); no error if it is already gone."""
    subprocess.run(["ip", "netns", "del", name], capture_output=True)


def forward(port: int, netns: str, host: str, target_port: int) -> subprocess.Popen[bytes]:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(64)
    try:
        return subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                netns,
                sys.executable,
                "-c",
                FORWARDER,
                str(listener.fileno()),
                host,
                str(target_port),
            ],
            pass_fds=(listener.fileno(),),
        )
    finally:
        listener.close()
