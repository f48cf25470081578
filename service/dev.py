"""``agentfarm dev`` (what ``make run`` starts): Redis, the API and a worker on one machine, until Ctrl-C.

Everything a newcomer needs from a fresh clone. Before starting anything it checks that no other copy
runs in this folder, that the ports are free and that ``redis-server`` is there (installing it when it
can); each problem is one line saying what to do. The banner (URL, keys, commands that work as
printed) comes only once the API answers ready. The children run in their own sessions, so the
terminal's Ctrl-C reaches only this process, which stops them in order: the API and the worker once
with SIGTERM (running tasks get the worker's grace period), then Redis last.
"""

# A command prints, starts processes, and imports heavy parts lazily:
# ruff: noqa: T201, S603, PLC0415

from __future__ import annotations

import argparse
import errno
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import IO

import httpx

from jobs.settings import SettingsError, load_settings
from service.children import own_session

RUN_DIR = Path(".run")
_held: list[IO[str]] = []  # the lock file, held (and locked) until this process exits


class DevError(Exception):
    """Start-up cannot go on; the message says what to do, in one line."""


class _Signals:
    """Counts SIGINT/SIGTERM: the first stops everything, a second skips the worker's grace period."""

    def __init__(self) -> None:
        self.count = 0
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1

    def sleep(self, seconds: float) -> bool:
        """Sleep unless a signal came; True if one did."""
        deadline = time.monotonic() + seconds
        while not self.count and time.monotonic() < deadline:
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        return self.count > 0


def cmd_dev(args: argparse.Namespace) -> int:
    signals = _Signals()
    children: list[tuple[str, subprocess.Popen[bytes]]] = []
    grace_s = [30.0]
    try:
        return _run(args, signals, children, grace_s)
    except DevError as exc:
        print(f"agentfarm dev: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        _stop(children, signals, grace_s[0])


def _run(
    args: argparse.Namespace,
    signals: _Signals,
    children: list[tuple[str, subprocess.Popen[bytes]]],
    grace_s: list[float],
) -> int:
    RUN_DIR.mkdir(exist_ok=True)
    _take_lock(args)
    env = os.environ.copy()
    own_redis = not env.get("AGENTFARM_REDIS_URL")
    _check_port(args.host, args.port, "PORT", "--port", "the API")
    if own_redis:
        _check_port("127.0.0.1", args.redis_port, "REDIS_PORT", "--redis-port", "dev Redis")
        redis_server = _redis_server()
        env["AGENTFARM_REDIS_URL"] = f"redis://127.0.0.1:{args.redis_port}/0"
    if not env.get("AGENTFARM_API_KEYS"):
        env["AGENTFARM_API_KEYS"] = f"dev:{_dev_secret('dev-api-key')}"
    if not env.get("AGENTFARM_ADMIN_KEYS"):
        env["AGENTFARM_ADMIN_KEYS"] = _dev_secret("dev-operator-key")
    try:
        settings = load_settings(env)
    except SettingsError as exc:
        raise DevError(str(exc)) from None
    grace_s[0] = settings.worker.shutdown_grace_s

    if own_redis:
        redis_dir = (RUN_DIR / "redis").absolute()
        redis_dir.mkdir(exist_ok=True)
        log = (RUN_DIR / "redis.log").open("ab")
        command = [redis_server, "--port", str(args.redis_port), "--bind", "127.0.0.1", "--dir", str(redis_dir)]
        command += ["--appendonly", "yes", "--maxmemory-policy", "noeviction"]
        children.append(("Redis", _start(command, env, log)))
        _wait_redis(args.redis_port, children[-1][1], signals)
    me = [sys.executable, "-m", "service.cli"]
    children.append(("the API", _start([*me, "serve", "--host", args.host, "--port", str(args.port)], env)))
    children.append(("the worker", _start([*me, "worker"], env)))
    url = f"http://{args.host}:{args.port}"
    if not _wait_ready(url, children, signals):
        if signals.count:
            return 0
        for name, child in children:
            if child.poll() is not None:
                raise DevError(f"{name} exited during start-up (exit code {child.returncode}); see its log above")
        raise DevError(f"the API at {url} did not become ready in 120 s; see the log above")
    print(_banner(url, env, own_redis, settings.llm.is_demo), flush=True)
    while not signals.sleep(0.3):
        for name, child in children:
            if child.poll() is not None:
                print(f"agentfarm dev: {name} exited (exit code {child.returncode}); stopping the others", flush=True)
                return 1
    return 0


def _take_lock(args: argparse.Namespace) -> None:
    """One ``agentfarm dev`` per folder: a second one would share the same Redis data."""
    import fcntl

    path = RUN_DIR / "dev.lock"
    lock = path.open("a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.seek(0)
        owner = lock.read().strip() or "unknown pid"
        lock.close()
        raise DevError(
            f"already running in this folder ({owner}); use that one, or stop it with Ctrl-C in its terminal"
        ) from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"pid {os.getpid()}, API http://{args.host}:{args.port}")
    lock.flush()
    _held.append(lock)


def _check_port(host: str, port: int, make_var: str, option: str, what: str) -> None:
    if not _port_busy(host, port):
        return
    spare = next((p for p in range(port + 1, port + 100) if not _port_busy(host, p)), port + 1)
    how = f"make run {make_var}={spare}" if os.environ.get("MAKELEVEL") else f"agentfarm dev {option} {spare}"
    extra = " (or set AGENTFARM_REDIS_URL to a Redis you run)" if make_var == "REDIS_PORT" else ""
    raise DevError(f"port {port} ({what}) on {host} is in use; stop what uses it, or choose another: {how}{extra}")


def _port_busy(host: str, port: int) -> bool:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise DevError(f"cannot listen on {host}: {exc.strerror}; choose another with --host") from None
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is not "in use"
        try:
            sock.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise DevError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return False


def _redis_server() -> str:
    """The ``redis-server`` binary; installed with apt-get when missing and this process may do so."""
    found = shutil.which("redis-server")
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt and os.geteuid() == 0:
        print("agentfarm dev: redis-server is missing; installing it: apt-get install -y redis-server", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = [apt, "install", "-y", "-q", "redis-server"]
        done = subprocess.run(install, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:  # a fresh image has no package lists yet
            subprocess.run([apt, "update", "-q"], env=env, capture_output=True, check=False)
            done = subprocess.run(install, env=env, capture_output=True, text=True, check=False)
        found = shutil.which("redis-server")
        if found:
            return found
        reason = (done.stderr.strip().splitlines() or ["no redis-server afterwards"])[-1]
        raise DevError(f"installing redis-server failed ({reason}); install it with: apt-get install -y redis-server")
    if apt:
        command = "sudo apt-get install -y redis-server"
    elif shutil.which("brew"):
        command = "brew install redis"
    else:
        command = "install Redis with your package manager (it provides redis-server)"
    raise DevError(f"redis-server is not installed; {command} (or set AGENTFARM_REDIS_URL to a Redis you run)")


def _dev_secret(name: str) -> str:
    path = RUN_DIR / name
    if not path.exists():
        path.write_text(secrets.token_urlsafe(24))
        path.chmod(0o600)
    return path.read_text().strip()


def _start(command: list[str], env: dict[str, str], output: IO[bytes] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        command,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=output,
        preexec_fn=own_session(),  # noqa: PLW1509 - no threads yet
    )


def _wait_redis(port: int, process: subprocess.Popen[bytes], signals: _Signals) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and process.poll() is None and not signals.count:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        signals.sleep(0.05)
    if signals.count:
        return
    log = (RUN_DIR / "redis.log").read_text(errors="replace").strip().splitlines()
    last = log[-1] if log else "no log"
    raise DevError(f"Redis did not start on port {port} ({last}); its log is {RUN_DIR / 'redis.log'}")


def _wait_ready(url: str, children: list[tuple[str, subprocess.Popen[bytes]]], signals: _Signals) -> bool:
    deadline = time.monotonic() + 120  # the worker's first import of crewai takes a while
    while time.monotonic() < deadline and not signals.count:
        if any(child.poll() is not None for _, child in children):
            return False
        try:
            if httpx.get(f"{url}/health/ready", timeout=1, trust_env=False).json().get("status") == "ready":
                return True
        except (httpx.HTTPError, ValueError):
            pass
        signals.sleep(0.3)
    return False


def agentfarm_command() -> str:
    """How to run this same ``agentfarm`` from the current folder, as a shell would need it typed."""
    script = Path(sys.executable).parent / "agentfarm"
    if not script.exists():
        return f"{shlex.quote(_from_cwd(Path(sys.executable)))} -m service.cli"
    on_path = shutil.which("agentfarm")
    if on_path and Path(on_path).resolve() == script.resolve():
        return "agentfarm"
    return shlex.quote(_from_cwd(script))


def _from_cwd(path: Path) -> str:
    path = path.absolute()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _banner(url: str, env: dict[str, str], own_redis: bool, demo: bool) -> str:
    api_key = env["AGENTFARM_API_KEYS"].split(",")[0].split(":")[1]
    operator_key = env["AGENTFARM_ADMIN_KEYS"].split(",")[0].strip()
    exports = f"AGENTFARM_URL={url} AGENTFARM_API_KEY={api_key}"
    if own_redis:
        redis = f"{env['AGENTFARM_REDIS_URL']}   data in {RUN_DIR / 'redis'}, log in {RUN_DIR / 'redis.log'}"
        exports += f" AGENTFARM_REDIS_URL={env['AGENTFARM_REDIS_URL']}"
    else:
        redis = "yours (AGENTFARM_REDIS_URL)"
    agentfarm = agentfarm_command()
    model = "the offline demo model (set AGENTFARM_LLM_MODEL for a real one)" if demo else "your AGENTFARM_LLM_MODEL"
    return f"""
  Agent Farm is ready; crews run on {model}.
    API            {url}   (docs: {url}/schema)
    API key        {api_key}
    Operator key   {operator_key}   (admin endpoints)
    Redis          {redis}

  Try it in another terminal, in {Path.cwd()}:
    export {exports}
    {agentfarm} submit research topic="solid-state batteries" depth=basic --watch
    {agentfarm} list
    {agentfarm} dlq list
    curl -s {url}/v1/admin/dead-letters -H 'Authorization: Bearer {operator_key}'

  Ctrl-C here stops everything.
"""


def _stop(children: list[tuple[str, subprocess.Popen[bytes]]], signals: _Signals, grace_s: float) -> None:
    """The API and the worker first (once each; the worker lets running tasks finish), Redis last."""
    alive = [(name, child) for name, child in children if child.poll() is None]
    if not alive:
        return
    seen = signals.count
    if seen:
        print("\nagentfarm dev: stopping (running tasks may finish; Ctrl-C again to hand them back now)", flush=True)
    apps = [c for name, c in alive if name != "Redis"]
    for child in apps:
        child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s + 15
    while any(c.poll() is None for c in apps) and time.monotonic() < deadline:
        if signals.count > seen:  # Ctrl-C again: a second signal makes the worker hand its tasks back now
            seen = signals.count
            for child in apps:
                if child.poll() is None:
                    child.send_signal(signal.SIGTERM if seen < 3 else signal.SIGKILL)
        time.sleep(0.05)
    for name, child in alive:
        if name == "Redis":
            child.send_signal(signal.SIGTERM)  # Redis writes its data and exits
        try:
            child.wait(timeout=15)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    print("agentfarm dev: stopped", flush=True)
