"""A real ``webfl serve`` in a subprocess, on a free loopback port."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

TOKEN = "test-admin-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_to_close(sock: socket.socket) -> bytes:
    """Everything ``sock`` receives until the peer closes it; a reset ends it too, keeping what came before."""
    answer = b""
    try:
        while chunk := sock.recv(65536):
            answer += chunk
    except OSError:
        pass
    return answer


@dataclass
class ServerProcess:
    url: str
    data_dir: Path
    proc: subprocess.Popen
    log_path: Path
    token: str = TOKEN
    #: Trusts the server's certificate when it serves TLS.
    ssl_context: ssl.SSLContext | None = None

    @property
    def ws_url(self) -> str:
        return self.url.replace("http", "ws", 1) + "/ws"

    def api(self, method: str, path: str, body: dict | None = None, token: str | None = TOKEN) -> tuple[int, dict]:
        req = urllib.request.Request(self.url + path, method=method, data=None if body is None else json.dumps(body).encode())
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=30, context=self.ssl_context) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def status(self) -> dict:
        code, body = self.api("GET", "/api/status")
        assert code == 200, body
        return body

    def wait_for(self, predicate, timeout: float = 120.0, what: str = "condition") -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status()
            if predicate(status):
                return status
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}; last status: {status}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, kill: bool = False) -> None:
        if self.proc.poll() is None:
            self.proc.kill() if kill else self.proc.terminate()
            self.proc.wait(timeout=20)


def start_server(
    data_dir: Path, *args: str, port: int | None = None, env: dict | None = None, tls: tuple[Path, Path] | None = None
) -> ServerProcess:
    """``tls`` is ``(certfile, keyfile)``: the server then speaks https and wss."""
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / f"server-{port}.log"
    cmd = [sys.executable, "-m", "webfl.cli", "serve", "--port", str(port), "--data-dir", str(data_dir), *args]
    context = None
    if tls is not None:
        cmd += ["--ssl-certfile", str(tls[0]), "--ssl-keyfile", str(tls[1])]
        context = ssl.create_default_context(cafile=str(tls[0]))
    full_env = {**os.environ, "WEBFL_ADMIN_TOKEN": TOKEN, **(env or {})}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env)
    scheme = "https" if tls else "http"
    server = ServerProcess(f"{scheme}://127.0.0.1:{port}", data_dir, proc, log_path, ssl_context=context)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{server.log()}")
        try:
            with urllib.request.urlopen(server.url + "/healthz", timeout=1, context=context):
                return server
        except OSError:
            time.sleep(0.1)
    server.stop(kill=True)
    raise RuntimeError(f"server did not come up:\n{server.log()}")


def simulate_through_a_kill(server: ServerProcess, url: str, rounds: int) -> tuple[str, str, dict]:
    """``webfl simulate`` (3 volunteers, ``rounds`` rounds) against ``url`` while ``server``,
    started with a ``WEBFL_CRASHPOINT``, SIGKILLs itself; it is restarted on the same data
    and port. Returns the simulator's stdout and stderr and the restarted server's status
    at the simulator's end. The simulator must exit 0."""
    port = int(server.url.rsplit(":", 1)[1])
    cmd = [sys.executable, "-m", "webfl.cli", "simulate", "--server", url, "--clients", "3", "--rounds", str(rounds),
           "--local-epochs", "1", "--timeout-s", "240"]
    sim = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "WEBFL_ADMIN_TOKEN": TOKEN})
    restarted = None
    try:
        assert server.proc.wait(timeout=120) == -9
        time.sleep(1.0)  # the simulator's status polls and its volunteers now meet a dead server
        restarted = start_server(server.data_dir, port=port)
        out, err = sim.communicate(timeout=240)
        assert sim.returncode == 0, out + err
        return out, err, restarted.status()
    finally:
        if sim.poll() is None:
            sim.kill()
            sim.communicate()
        if restarted is not None:
            restarted.stop()
        server.stop(kill=True)


def start_member(
    data_dir: Path, redis_url: str, member_id: str, *args: str, port: int | None = None, lease_s: float = 10.0, env: dict | None = None
) -> ServerProcess:
    """One member of a cluster on ``redis_url`` (members share ``data_dir``'s SQLite, or a ``--database`` among ``args``)."""
    return start_server(data_dir, "--redis", redis_url, "--member-id", member_id, "--lease-s", f"{lease_s:g}", *args, port=port, env=env)
