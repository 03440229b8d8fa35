"""Runs INSIDE a contestant container (toy image, run profile): tries every escape, prints results.

Each attempt prints `<name> blocked <why>` or `<name> ESCAPED`, then the probe serves /health so
the agent's normal launch path starts, measures and stops it.
"""

import os
import socket
import sys


def attempt(name, action):
    try:
        action()
    except Exception as exc:  # every failure is the expected outcome
        print(name, "blocked", type(exc).__name__, exc, flush=True)
    else:
        print(name, "ESCAPED", flush=True)


def write_root():
    with open("/escape", "w") as handle:
        handle.write("x")


def connect(host):
    def run():
        socket.create_connection((host, int(os.environ.get("PROBE_PORT", "80"))), timeout=2).close()

    return run


def docker_socket():
    sock = socket.socket(socket.AF_UNIX)
    sock.connect("/var/run/docker.sock")


def read_job():
    for path in sys.argv[1:]:
        with open(path, "rb") as handle:
            handle.read()


def fork_bomb():
    children = []
    try:
        for _ in range(100000):
            pid = os.fork()
            if pid == 0:
                os.pause()
            children.append(pid)
    finally:
        for pid in children:
            os.kill(pid, 9)
        for pid in children:
            os.waitpid(pid, 0)


attempt("write_root", write_root)
attempt("connect_host", connect("10.0.2.2"))
attempt("connect_public", connect("1.1.1.1"))
attempt("docker_socket", docker_socket)
attempt("read_job", read_job)
attempt("fork_bomb", fork_bomb)
sys.argv[1:] = []
sys.path.insert(0, "/app")
import toy_server  # noqa: E402

toy_server.main([])
