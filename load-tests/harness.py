"""Small helpers shared by the load-test scripts: release binary paths, ports, readiness."""
import os
import socket
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REL = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, proc, what, within=20):
    """Return once 127.0.0.1:port accepts; exit with a message if `proc` dies or time runs out."""
    deadline = time.time() + within
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc is not None and proc.poll() is not None:
                sys.exit(f"{what} exited early")
            if time.time() > deadline:
                sys.exit(f"{what} did not start")
            time.sleep(0.05)
