"""Redis processes for tests beyond a single plain server: a password/ACL-protected server and a
Sentinel group (master, one replica, three sentinels), all on loopback with free ports.

Same approach as ``tests/support/redis_server.py``: the system's ``redis-server`` in a temp dir,
waited for with a raw PING so no client library is involved in deciding it is up.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from redis import Redis

from tests.support.redis_server import free_port

MASTER_NAME = "agentfarm"  # RedisConfig.sentinel_master's default


def _binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed: apt-get install -y redis-server redis-sentinel")
    return binary


def _wait_until(predicate: object, what: str, timeout_s: float) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception as exc:  # retried until the deadline, reported then
            last = exc
        time.sleep(0.05)
    raise RuntimeError(f"timed out after {timeout_s} s waiting for {what} (last error: {last})")


class RedisProcess:
    """One ``redis-server`` (or sentinel) with extra arguments; ``password``/``username`` for AUTH."""

    def __init__(
        self,
        name: str,
        *args: str,
        folder: Path | None = None,
        password: str | None = None,
        username: str | None = None,
        config: str | None = None,
    ) -> None:
        self.name = name
        self.port = free_port()
        self.dir = folder or Path(tempfile.mkdtemp(prefix=f"agentfarm-{name}-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.password = password
        self.username = username
        self.args = list(args)
        self.config = config  # a sentinel rewrites its config file: it must be writable
        self.log_path = self.dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = ""
        if self.password:
            auth = f"{self.username or ''}:{self.password}@"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def client(self, **kwargs: object) -> Redis:
        return Redis(
            host="127.0.0.1",
            port=self.port,
            username=self.username,
            password=self.password,
            socket_timeout=2,
            **kwargs,  # type: ignore[arg-type]
        )

    def start(self) -> None:
        command = [_binary()]
        if self.config is not None:
            conf = self.dir / f"{self.name}.conf"
            conf.write_text(self.config.format(port=self.port, dir=self.dir), encoding="utf-8")
            command.append(str(conf))
        command += ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir)]
        command += ["--logfile", str(self.log_path), *self.args]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        auth = b""
        if self.password:
            parts = [self.username, self.password] if self.username else [self.password]
            auth = ("AUTH " + " ".join(parts) + "\r\n").encode()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(auth + b"PING\r\n")
                    if b"+PONG" in sock.recv(64):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not start on port {self.port}: {self.log_tail()}")

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
            self.process = None


SENTINEL_CONFIG = """\
port {port}
bind 127.0.0.1
dir {dir}
sentinel resolve-hostnames no
sentinel monitor %(master)s 127.0.0.1 %(master_port)d 2
sentinel down-after-milliseconds %(master)s 2000
sentinel failover-timeout %(master)s 10000
sentinel parallel-syncs %(master)s 1
"""

DATA_ARGS = ("--save", "", "--appendonly", "yes", "--maxmemory-policy", "noeviction")


class SentinelGroup:
    """A master, one replica and three sentinels monitoring them as ``MASTER_NAME``."""

    def __init__(self, *, data_args: tuple[str, ...] = ()) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="agentfarm-sentinel-"))
        args = (*DATA_ARGS, *data_args)
        self.nodes = [RedisProcess("redis-a", *args, folder=self.root / "a")]
        self.nodes.append(
            RedisProcess("redis-b", *args, "--replicaof", "127.0.0.1", str(self.nodes[0].port), folder=self.root / "b")
        )
        config = SENTINEL_CONFIG % {"master": MASTER_NAME, "master_port": self.nodes[0].port}
        self.sentinels = [
            RedisProcess(f"sentinel-{i}", "--sentinel", folder=self.root / f"s{i}", config=config) for i in range(3)
        ]

    @property
    def addresses(self) -> str:
        """AGENTFARM_REDIS_SENTINELS."""
        return ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)

    def start(self, timeout_s: float = 20) -> None:
        for process in (*self.nodes, *self.sentinels):
            process.start()
        _wait_until(lambda: self._link_up(self.nodes[1]), "the replica to sync", timeout_s)
        _wait_until(self._sentinels_agree, "the sentinels to find the replica and each other", timeout_s)

    def master_port(self, sentinel: RedisProcess | None = None) -> int:
        with (sentinel or self.sentinels[0]).client() as client:
            _host, port = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
            return int(port)

    def node(self, port: int) -> RedisProcess:
        return next(n for n in self.nodes if n.port == port)

    @property
    def master(self) -> RedisProcess:
        return self.node(self.master_port())

    @property
    def replica(self) -> RedisProcess:
        return next(n for n in self.nodes if n.port != self.master_port())

    def replicated(self) -> bool:
        """The replica has everything the master has written."""
        with self.master.client() as client:
            offset = int(client.info("replication")["master_repl_offset"])
        with self.replica.client() as client:
            info = client.info("replication")
        return info.get("master_link_status") == "up" and int(info.get("slave_repl_offset", -1)) >= offset

    def failover(self, timeout_s: float = 20) -> tuple[int, int]:
        """``SENTINEL FAILOVER``; returns once every sentinel names the new master and the old one
        replicates from it. (old port, new port)."""
        old = self.master_port()
        with self.sentinels[0].client() as client:
            assert client.execute_command("SENTINEL", "FAILOVER", MASTER_NAME) in (b"OK", "OK", True)
        new = next(n.port for n in self.nodes if n.port != old)
        _wait_until(lambda: all(self.master_port(s) == new for s in self.sentinels), "all sentinels", timeout_s)
        _wait_until(lambda: self._role(self.node(new)) == "master", "the promotion", timeout_s)
        _wait_until(lambda: self._link_up(self.node(old)), "the old master to follow the new one", timeout_s)
        return old, new

    def close(self) -> None:
        for process in (*self.sentinels, *self.nodes):
            process.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    @staticmethod
    def _role(node: RedisProcess) -> str:
        with node.client() as client:
            return str(client.info("replication")["role"])

    @staticmethod
    def _link_up(node: RedisProcess) -> bool:
        with node.client() as client:
            info = client.info("replication")
        return info["role"] == "slave" and info.get("master_link_status") == "up"

    def _sentinels_agree(self) -> bool:
        for sentinel in self.sentinels:
            with sentinel.client(decode_responses=True) as client:
                raw = client.execute_command("SENTINEL", "MASTER", MASTER_NAME)
            state = dict(zip(raw[::2], raw[1::2], strict=True)) if isinstance(raw, list) else raw
            if int(state["num-slaves"]) < 1 or int(state["num-other-sentinels"]) < 2:
                return False
        return True
