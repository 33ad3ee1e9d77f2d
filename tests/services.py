"""Real Debian ``redis-server``, PostgreSQL and ``nginx`` on loopback, for the scale-out tests.

Each runs in its own temporary folder on a free port, in the foreground of a process
this module started, and is stopped and removed by ``stop()`` (the fixtures in
``conftest.py`` call it). Nothing here touches a system-wide instance. A service whose
binary is missing raises ``Missing``; the fixtures turn that into a skip only when not
root (as root, ``make system`` installs them, so missing is a failure).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import psycopg

from servers import free_port

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
sys.path.insert(0, str(DEPLOY))
from nginx_site import standalone_config  # noqa: E402


class Missing(Exception):
    """The service's binary is not installed."""


def find_binary(name: str, *candidates: str) -> str:
    for path in (*candidates, shutil.which(name)):
        if path and os.access(path, os.X_OK):
            return path
    raise Missing(f"{name} is not installed (make system installs it as root)")


def _wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"did not listen on {port} in {timeout:g} s:\n{log.read_text(errors='replace')}")


def _stop(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _started_or_stopped(service, wait) -> None:
    """Run ``wait``; if the service does not come up, stop it and clean up before raising."""
    try:
        wait()
    except BaseException:
        service.stop()
        raise


@dataclass
class _Foreground:
    """A service in the foreground of a process started here, in its own folder ``root``."""

    port: int
    root: Path
    proc: subprocess.Popen

    @classmethod
    def _launch(cls, cmd: list[str], root: Path, port: int, log: Path) -> Self:
        """Start ``cmd`` and wait for it to listen on ``port``; if it does not, it is stopped and removed."""
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        service = cls(port, root, proc)
        _started_or_stopped(service, lambda: _wait_port(port, proc, log))
        return service

    def stop(self) -> None:
        _stop(self.proc)  # SIGTERM: redis's shutdown, nginx's fast shutdown
        shutil.rmtree(self.root, ignore_errors=True)


class Redis(_Foreground):
    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @classmethod
    def start(cls) -> Redis:
        binary = find_binary("redis-server", "/usr/bin/redis-server")
        root, port = Path(tempfile.mkdtemp(prefix="webfl-redis-")), free_port()
        log = root / "redis.log"
        log.touch()
        # No persistence, loopback only, no config file: the test owns every setting.
        cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(root), "--save", "",
               "--appendonly", "no", "--daemonize", "no", "--logfile", str(log)]
        return cls._launch(cmd, root, port, log)


@dataclass
class Postgres:
    """A fresh cluster (``initdb``) with a password-protected ``webfl`` superuser and database."""

    port: int
    root: Path
    bindir: Path
    user: str | None  # who runs the server: PostgreSQL refuses root, so "postgres" when we are root
    password: str = "webfl-test"

    @property
    def url(self) -> str:
        return f"postgresql://webfl:{self.password}@127.0.0.1:{self.port}/webfl"

    @staticmethod
    def find_bindir() -> Path:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
        initdb = found[-1] if found else shutil.which("initdb")
        if not initdb:
            raise Missing("PostgreSQL (initdb) is not installed (make system installs it as root)")
        return Path(initdb).parent

    def _run(self, *cmd: str) -> subprocess.CompletedProcess:
        prefix = ["runuser", "-u", self.user, "--"] if self.user else []
        done = subprocess.run([*prefix, *cmd], capture_output=True, text=True, timeout=120, cwd=self.root)
        if done.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        return done

    @classmethod
    def start(cls) -> Postgres:
        bindir = cls.find_bindir()
        user = "postgres" if os.geteuid() == 0 else None
        root = Path(tempfile.mkdtemp(prefix="webfl-pg-"))
        pg = cls(free_port(), root, bindir, user)
        if user:
            entry = pwd.getpwnam(user)
            os.chown(root, entry.pw_uid, entry.pw_gid)
        (root / "pw").write_text(pg.password)
        if user:
            os.chown(root / "pw", entry.pw_uid, entry.pw_gid)
        _started_or_stopped(pg, pg._init_and_start)
        return pg

    def _init_and_start(self) -> None:
        data, sockets = self.root / "data", self.root / "sockets"
        self._run(str(self.bindir / "initdb"), "-D", str(data), "-U", "webfl", f"--pwfile={self.root / 'pw'}",
                  "--auth=scram-sha-256", "--no-sync", "--encoding=UTF8", "--locale=C")
        self._run("mkdir", str(sockets))
        # fsync off: a test cluster that a crash loses is fine, and the disk is shared.
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {sockets} -c fsync=off -c full_page_writes=off"
        self._run(str(self.bindir / "pg_ctl"), "start", "-w", "-t", "60", "-D", str(data), "-l", str(self.root / "postgres.log"), "-o", options)
        with psycopg.connect(self.url.removesuffix("/webfl") + "/postgres", autocommit=True, connect_timeout=10) as conn:
            conn.execute("CREATE DATABASE webfl")

    def stop(self) -> None:
        if not (self.root / "data" / "postmaster.pid").exists():
            shutil.rmtree(self.root, ignore_errors=True)
            return
        try:
            self._run(str(self.bindir / "pg_ctl"), "stop", "-w", "-m", "fast", "-D", str(self.root / "data"))
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


class Nginx(_Foreground):
    """nginx with ``deploy/nginx/webfl.conf``, its upstream pointed at the given members."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def start(cls, members: list[str]) -> Nginx:
        binary = find_binary("nginx", "/usr/sbin/nginx")
        root, port = Path(tempfile.mkdtemp(prefix="webfl-nginx-")), free_port()
        os.chmod(root, 0o755)
        (root / "temp").mkdir(mode=0o777)
        os.chmod(root / "temp", 0o777)  # the workers (nobody when the master is root) write here
        (root / "nginx.conf").write_text(standalone_config(members, f"127.0.0.1:{port}", root))
        log = root / "error.log"
        log.touch()
        cmd = [binary, "-p", str(root), "-c", str(root / "nginx.conf"), "-g", "daemon off;"]
        test = subprocess.run([*cmd, "-t"], capture_output=True, text=True)
        if test.returncode:
            raise RuntimeError(f"nginx -t refused the configuration:\n{test.stderr}")
        return cls._launch(cmd, root, port, log)

    def log(self, name: str = "error.log") -> str:
        return (self.root / name).read_text(errors="replace")
