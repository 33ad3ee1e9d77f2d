"""Smoke tests of the real services the scale-out builds on (tests/services.py), and of
``deploy/nginx/webfl.conf`` in front of a real ``webfl serve``."""

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg
import pytest
import redis
import websockets.sync.client as ws_client

from servers import TOKEN, free_port, simulate_through_a_kill, start_server
from services import DEPLOY, Missing, Postgres, find_binary  # also puts deploy/ on sys.path
from nginx_site import SITE, site_config  # noqa: I001 - needs the line above
from webfl import __version__
from webfl.core.protocol import Message, decode, encode


def test_redis_answers_ping_set_get_and_pubsub(redis_server):
    client = redis.Redis.from_url(redis_server.url)
    assert client.ping() is True
    assert client.set("webfl:model:digest", b"\x00\x01abc") is True
    assert client.get("webfl:model:digest") == b"\x00\x01abc"
    assert client.set("webfl:leader", "a", nx=True, px=15000) and not client.set("webfl:leader", "b", nx=True, px=15000)
    sub = client.pubsub()
    sub.subscribe("webfl:models")
    assert sub.get_message(timeout=5)["type"] == "subscribe"
    assert client.publish("webfl:models", b"v2") == 1
    assert sub.get_message(timeout=5)["data"] == b"v2"
    client.close()


def test_stopping_redis_removes_its_folder(redis_server):
    root = redis_server.root
    assert root.is_dir()
    redis_server.stop()
    assert not root.exists() and redis_server.proc.poll() is not None


def test_postgres_stores_and_returns_a_checkpoint_in_one_transaction(postgres_server):
    blob = bytes(range(256)) * 4
    with psycopg.connect(postgres_server.url, connect_timeout=10) as conn:
        conn.execute("CREATE TABLE checkpoints (model_version INTEGER PRIMARY KEY, params BYTEA NOT NULL)")
        with conn.transaction():
            conn.execute("INSERT INTO checkpoints VALUES (%s, %s)", (1, blob))
        with pytest.raises(psycopg.errors.UniqueViolation), conn.transaction():
            conn.execute("INSERT INTO checkpoints VALUES (%s, %s)", (2, blob))
            conn.execute("INSERT INTO checkpoints VALUES (%s, %s)", (1, blob))  # rolls back version 2 too
        rows = conn.execute("SELECT model_version, params FROM checkpoints ORDER BY 1").fetchall()
    assert rows == [(1, blob)]


def test_postgres_refuses_a_wrong_password(postgres_server):
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(postgres_server.url.replace(postgres_server.password, "wrong"), connect_timeout=10)


# -- nginx with deploy/nginx/webfl.conf in front of one member ---------------------------


def test_the_site_renderer_changes_only_the_members_and_the_listen_line():
    committed = SITE.read_text()
    rendered = site_config(["10.0.0.1:8001", "10.0.0.2:8001"], "127.0.0.1:9000")
    upstream = rendered[rendered.index("upstream webfl_members") : rendered.index("}")]
    assert [line.split()[1] for line in upstream.splitlines() if line.strip().startswith("server ")] == ["10.0.0.1:8001;", "10.0.0.2:8001;"]
    assert "# server" not in upstream and "least_conn;" in upstream and "keepalive 32;" in upstream
    assert "listen 127.0.0.1:9000;" in rendered and rendered.count("listen ") == 1
    after = lambda text: text[text.index("map $http_upgrade") :].replace("listen 8080;", "listen 127.0.0.1:9000;")  # noqa: E731
    assert rendered[rendered.index("map $http_upgrade") :] == after(committed)  # the rest is the file as committed
    with pytest.raises(ValueError, match="at least one member"):
        site_config([], "8080")


@pytest.fixture
def proxied(tmp_path, nginx_proxy):
    member = start_server(tmp_path / "data", "--forwarded-allow-ips", "127.0.0.1")
    proxy = nginx_proxy([member.url.removeprefix("http://")])
    yield member, proxy
    member.stop()


def get(url: str, headers: dict | None = None, data: bytes | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_nginx_forwards_the_client_address_and_not_a_forged_one(proxied):
    member, proxy = proxied
    # The client comes from 127.0.0.2 (nginx reaches the member from 127.0.0.1, the one
    # proxy it trusts) and claims another address in its own X-Forwarded-For.
    host, port = proxy.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30, source_address=("127.0.0.2", 0))
    conn.request("GET", "/healthz", headers={"X-Forwarded-For": "203.0.113.9"})
    assert conn.getresponse().status == 200
    conn.close()
    code, body = get(proxy.url + "/api/status", {"Authorization": f"Bearer {TOKEN}"})
    assert code == 200 and b'"state"' in body
    assert '127.0.0.2:0 - "GET /healthz' in member.log()
    assert "203.0.113.9" not in member.log()


def test_nginx_refuses_a_large_http_body_before_it_reaches_the_member(proxied):
    member, proxy = proxied
    code, _ = get(proxy.url + "/api/rounds", {"Authorization": f"Bearer {TOKEN}"}, data=b"{" + b" " * 200_000 + b"}")
    assert code == 413
    assert "/api/rounds" not in member.log()


def test_a_websocket_through_nginx_speaks_the_protocol(proxied):
    _, proxy = proxied
    with ws_client.connect(proxy.url.replace("http", "ws", 1) + "/ws", compression=None, max_size=None, open_timeout=10) as ws:
        ws.send(encode(Message("hello", {"version": __version__, "codecs": ["none"], "agent": "test"})))
        welcome = decode(ws.recv(timeout=10))
        assert welcome.type == "welcome" and welcome["volunteer"]


def test_simulated_volunteers_join_through_nginx_and_complete_rounds(proxied):
    member, proxy = proxied
    cmd = [sys.executable, "-m", "webfl.cli", "simulate", "--server", proxy.url, "--clients", "3", "--rounds", "2", "--local-epochs", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "WEBFL_ADMIN_TOKEN": TOKEN})
    assert done.returncode == 0, done.stdout + done.stderr + proxy.log()
    history = member.status()["history"]
    assert [h["round"] for h in history] == [1, 2] and all(h["participants"] == 3 for h in history)
    # The model went down the proxied sockets: round 2's tasks carried commit 1's to all three.
    assert history[1]["bytes_down"] > 3 * 199_210 * 4
    assert proxy.log("access.log").count('"GET /ws HTTP/1.1" 101') >= 3


# -- deploy/local.sh: the whole stack in one folder ---------------------------------------


@pytest.fixture
def local_stack():
    try:
        find_binary("redis-server", "/usr/bin/redis-server"), find_binary("nginx", "/usr/sbin/nginx"), Postgres.find_bindir()
    except Missing as exc:
        if os.geteuid() != 0:
            pytest.skip(f"{exc}; not root, so set-up could not install it")
        raise
    folder = Path(tempfile.mkdtemp(prefix="webfl-local-"))
    folder.chmod(0o755)  # PostgreSQL runs as postgres when we are root: it must enter the folder
    ports = {name: free_port() for name in ("WEBFL_HTTP_PORT", "WEBFL_MEMBER_PORT", "WEBFL_REDIS_PORT", "WEBFL_PG_PORT")}
    env = {**os.environ, **{k: str(v) for k, v in ports.items()}, "WEBFL": str(Path(sys.executable).parent / "webfl")}
    env.pop("WEBFL_ADMIN_TOKEN", None)

    def run(command: str, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(DEPLOY / "local.sh"), command, str(folder)], capture_output=True, text=True, timeout=180, env={**env, **extra})

    yield run, folder, ports
    run("stop")
    shutil.rmtree(folder, ignore_errors=True)


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def test_local_sh_starts_the_stack_idempotently_and_stops_it(local_stack):
    run, folder, ports = local_stack
    started = run("start")
    assert started.returncode == 0, started.stdout + started.stderr
    http = f"http://127.0.0.1:{ports['WEBFL_HTTP_PORT']}"
    token = (folder / "admin_token").read_text().strip()
    code, body = get(http + "/api/status", {"Authorization": f"Bearer {token}"})
    assert code == 200 and b'"state"' in body  # through nginx, with the generated token
    r = redis.Redis(port=ports["WEBFL_REDIS_PORT"], password=(folder / "redis" / "password").read_text().strip())
    assert r.ping() and r.config_get("appendonly") == {"appendonly": "yes"}
    r.close()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=ports["WEBFL_REDIS_PORT"]).set("k", "v")
    pg = f"postgresql://webfl:{(folder / 'postgres' / 'password').read_text().strip()}@127.0.0.1:{ports['WEBFL_PG_PORT']}/webfl"
    with psycopg.connect(pg, connect_timeout=10) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("webfl",)
        assert conn.execute("SELECT COUNT(*) FROM secrets").fetchone() == (3,)  # the member's store is here

    again = run("start")
    assert again.returncode == 0 and again.stdout.count(": running") == 4, again.stdout + again.stderr
    grown = run("start", WEBFL_MEMBERS="2")  # a second member joins the cluster; nginx reloads
    assert grown.returncode == 0 and "member 2: http" in grown.stdout and "nginx: reloaded with 2 member(s)" in grown.stdout, grown.stdout + grown.stderr
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        cluster = json.loads(get(http + "/api/status", {"Authorization": f"Bearer {token}"})[1])["cluster"]
        if len(cluster["members"]) == 2:
            break
        time.sleep(0.3)
    assert sorted(m["id"] for m in cluster["members"]) == ["member-1", "member-2"] and cluster["leader"] == "member-1"

    stopped = run("stop")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert not any(listening(p) for p in ports.values())
    assert (folder / "postgres" / "data" / "PG_VERSION").exists()  # data stays
    assert not (folder / "member-1" / "webfl.sqlite3").exists()  # and none of it in the member's folder


def test_the_simulator_rides_out_a_member_restart_behind_nginx(tmp_path, nginx_proxy):
    """Through the proxy a dead member is a 502, not a refused connection: still ridden out."""
    member = start_server(tmp_path / "data", env={"WEBFL_CRASHPOINT": "training:2"})  # kill -9 mid-round 2
    proxy = nginx_proxy([f"127.0.0.1:{member.url.rsplit(':', 1)[1]}"])
    out, err, status = simulate_through_a_kill(member, proxy.url, rounds=3)
    assert [h["round"] for h in status["history"]] == [1, 2, 3]
    assert "HTTP 502" in err and "server back after" in err
    assert [line.split()[1] for line in out.splitlines() if line.startswith("round ")] == ["1", "2", "3"]
