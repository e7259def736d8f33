"""Loopback ports for processes started by a launcher (the local cluster, tests, benchmarks): picking one, telling
whether one can be bound and which process listens on it, and the port file a server writes once it is bound.

Why a port file: a port picked by binding port 0 and closing the socket is only a guess. Until the child binds it,
another process (a second server, a test, the kernel giving it to an outgoing connection) can take it. A server
started with `--port 0 --port-file PATH` binds a free port itself and writes which it got, so nothing can race it.
Linux only where /proc is read (`listens`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

LOCAL = "127.0.0.1"
IN_USE = os.strerror(errno.EADDRINUSE)  # "Address already in use": what a child that lost its port logs


class BindError(RuntimeError):
    """A port the server cannot listen on (taken, or not an address of this machine)."""


def free_port(host: str = LOCAL) -> int:
    """A port that was free a moment ago: a guess that another process can take before the caller binds it."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def bind_error(host: str, port: int) -> str:
    """Why a listener cannot bind `host:port` now (the OS's words, e.g. IN_USE), or "" if it can; SO_REUSEADDR as
    servers set it, so TIME_WAIT leftovers do not count; host may be "[::]"."""
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as err:
        return str(err)
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as err:
            return err.strerror or str(err)
    return ""


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
    return inodes


def listens(pid: int, port: int) -> bool:
    """Whether process `pid` itself holds a TCP socket listening on `port` (any address): so a readiness probe that
    got an answer on the port knows the answer came from that process and not from one that took its port."""
    inodes = _socket_inodes(pid)
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            next(f)
            for line in f:
                fields = line.split()  # sl local_address rem_address st ... uid timeout inode
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port and fields[9] in inodes:
                    return True
    return False


def write_port_file(path: Path, ports: dict[str, Any]) -> None:
    """`ports` as one JSON object in `path`, with this process's pid; written whole (rename) so that a reader
    never sees half of it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), **ports}) + "\n")
    os.replace(tmp, path)


def read_port_file(path: Path, pid: int | None = None) -> dict[str, Any] | None:
    """The port file's object; None while it is not there (or, given `pid`, written by another process)."""
    try:
        ports = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(ports, dict) or (pid is not None and ports.get("pid") != pid):
        return None
    return ports


def wait_port_file(path: Path, process: subprocess.Popen[Any], log: Path, timeout: float = 120.0) -> dict[str, Any]:
    """The port file of `process` (a server started with `--port-file path`) once it has written it: every port
    bound and health SERVING. A RuntimeError with the tail of its `log` if it exits first or takes over `timeout`."""
    deadline = time.monotonic() + timeout
    while (ports := read_port_file(path, process.pid)) is None:
        if process.poll() is not None or time.monotonic() > deadline:
            what = f"exited with {process.returncode}" if process.poll() is not None else f"no {path} after {timeout} s"
            with contextlib.suppress(OSError):
                what += ":\n" + log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"server did not start: {what}")
        time.sleep(0.1)
    return ports


def remove_port_file(path: Path) -> None:
    """Remove `path` if this process wrote it (a stale file must not point a supervisor at a dead server)."""
    if read_port_file(path, os.getpid()) is not None:
        with contextlib.suppress(OSError):
            path.unlink()
