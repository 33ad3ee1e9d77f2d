"""The store on PostgreSQL as on SQLite: shared secrets and sessions, migrations (also two
members starting at once), and a real ``webfl serve --database`` that survives kill -9.

The store's behaviour tests themselves (test_task_store.py, test_funnel.py,
test_rounds_commit.py, test_hardening.py) run on both backends through the
``store_target`` fixture (conftest.py)."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import psycopg
import pytest
from starlette.testclient import TestClient
from test_churn import simulator, stop

from servers import TOKEN, free_port, start_server
from webfl import __version__
from webfl.core.protocol import Message, decode, encode
from webfl.server.app import create_app
from webfl.server.config import Settings
from webfl.server.security import TaskTokens
from webfl.server.storage import DatabaseUnavailable, PostgresURL, parse_database_url
from webfl.server.store import SCHEMA_VERSION, NewerSchema, RoundRecord, Store

AUTH = {"Authorization": f"Bearer {TOKEN}"}


# -- shared secrets ----------------------------------------------------------------------


def test_a_secret_is_drawn_once_and_every_store_on_the_database_reads_the_same(store_target):
    first, second = Store(store_target), Store(store_target)
    key = first.secret("session")
    assert len(key) == 32 and second.secret("session") == key
    assert second.secret("session", initial=b"k" * 32) == key  # a value kept from before never replaces one
    assert first.secret("resume_tokens") != key
    # Members asking for a new key at the same moment all get the one that was stored first.
    with ThreadPoolExecutor(8) as pool:
        drawn = set(pool.map(lambda i: (first, second)[i % 2].secret("task_tokens"), range(8)))
    assert len(drawn) == 1 and drawn == {Store(store_target).secret("task_tokens")}
    first.close()
    second.close()


def test_a_signed_out_session_is_refused_by_every_store_until_it_would_have_expired(store_target):
    first, second = Store(store_target), Store(store_target)
    now = int(time.time())
    first.revoke_session("old", now - 1)
    first.revoke_session("sid", now + 3600)
    assert second.session_revoked("sid") and not second.session_revoked("other")
    second.revoke_session("sid2", now + 3600)  # each sign-out forgets the expired ones
    assert not first.session_revoked("old") and first.session_revoked("sid")
    first.close()
    second.close()


def test_a_damaged_session_key_file_is_replaced_by_a_drawn_key(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "session_secret").write_text("abcd\n")  # too short to be a key
    with TestClient(create_app(Settings(data_dir=data, admin_token=TOKEN))) as client:
        assert client.get("/healthz").status_code == 200
    store = Store(data / "webfl.sqlite3")
    assert len(store.secret("session")) == 32 and store.secret("session") != bytes.fromhex("abcd")
    store.close()


def test_a_data_folder_from_before_keeps_its_session_key_and_signed_out_sessions(tmp_path):
    """An upgrade signs nobody out and lets no signed-out cookie back in."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "session_secret").write_text(bytes(range(32)).hex() + "\n")
    (data / "revoked_sessions").write_text(f"gone {int(time.time()) + 3600}\nexpired 1\n")
    with TestClient(create_app(Settings(data_dir=data, admin_token=TOKEN))):
        pass
    store = Store(data / "webfl.sqlite3")
    assert store.secret("session") == bytes(range(32))
    assert store.session_revoked("gone") and not store.session_revoked("expired")
    assert not (data / "session_secret").exists() and not (data / "revoked_sessions").exists()  # one copy: the store's
    store.close()


# -- two members on one PostgreSQL -----------------------------------------------------------


def _sign_in(client: TestClient) -> tuple[str, str]:
    """The session cookie and CSRF token of a sign-in through the admin page's form."""
    form = re.search(r'name="csrf" value="([^"]+)"', client.get("/admin").text).group(1)
    signed_in = client.post("/admin/login", data={"csrf": form, "token": TOKEN}, follow_redirects=False)
    assert signed_in.status_code == 303
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', client.get("/admin").text).group(1)
    return client.cookies["webfl_admin"], csrf


def _hello(ws, **fields) -> dict:
    ws.send_bytes(encode(Message("hello", {"version": __version__, "codecs": ["none"], "agent": "test", **fields})))
    welcome = decode(ws.receive_bytes())
    assert welcome.type == "welcome", welcome.fields
    return welcome.fields


def _receive(ws, kind: str) -> dict:
    for _ in range(20):
        msg = decode(ws.receive_bytes())
        if msg.type == kind:
            return msg.fields
    raise AssertionError(f"no {kind} frame")


def test_two_members_honour_each_others_sessions_credentials_and_tokens_and_a_sign_out(tmp_path, postgres_database):
    def member(name: str) -> TestClient:
        return TestClient(create_app(Settings(data_dir=tmp_path / name, admin_token=TOKEN, database=postgres_database)))

    with member("a") as a, member("b") as b:
        cookie, csrf = _sign_in(a)
        session = {"cookie": f"webfl_admin={cookie}"}
        assert b.get("/api/status", headers=session).status_code == 200
        assert b.post("/api/rounds/stop", headers={**session, "x-csrf-token": csrf}).status_code == 200  # its CSRF token too
        assert b.post("/api/rounds/stop", headers={**session, "x-csrf-token": "x" * len(csrf)}).status_code == 403

        # A volunteer welcomed by one member resumes its id on the other (a reload through the load balancer).
        with a.websocket_connect("/ws") as ws:
            welcome = _hello(ws)
        with b.websocket_connect("/ws") as ws:
            again = _hello(ws, resume={"volunteer": welcome["volunteer"], "token": welcome["resume"]})
            assert again["volunteer"] == welcome["volunteer"]
            # The task token it is given here checks out under the key any other member reads.
            ws.send_bytes(encode(Message("ready", {"num_examples": 50})))
            for _ in range(100):
                if b.get("/api/status", headers=AUTH).json()["volunteers"]["ready"] == 1:
                    break
                time.sleep(0.05)
            assert b.post("/api/rounds", json={"rounds": 1, "clients_per_round": 1}, headers=AUTH).status_code == 202
            task = _receive(ws, "task")
            third = Store(postgres_database)
            tokens = TaskTokens(third.secret("task_tokens"))
            assert tokens.check(again["volunteer"], task["round"], task["model_version"], task["token"])
            assert not tokens.check("someone-else", task["round"], task["model_version"], task["token"])
            third.close()
            assert b.post("/api/rounds/stop", headers=AUTH).status_code == 200

        # Signing out on one member ends the session on the other.
        assert a.post("/admin/logout", data={"csrf": csrf}, follow_redirects=False).status_code == 303
        assert b.get("/api/status", headers=session).status_code == 401
        assert a.get("/api/status", headers=session).status_code == 401


# -- migrations ------------------------------------------------------------------------------


def test_members_starting_at_once_on_an_empty_database_migrate_it_once(postgres_database):
    start = threading.Barrier(4)

    def open_store(_: int) -> Store:
        start.wait()
        return Store(postgres_database)

    with ThreadPoolExecutor(4) as pool:
        stores = list(pool.map(open_store, range(4)))
    runs = [s.scoped("mnist", "2nn").start_run({"rounds": 1}) for s in stores]
    assert sorted(runs) == [1, 2, 3, 4]  # one runs table, numbered by the database
    assert stores[0].query("SELECT version FROM webfl_schema") == [(SCHEMA_VERSION,)]
    for s in stores:
        s.close()


def test_an_older_postgres_database_is_migrated_and_a_newer_one_refused(postgres_database):
    store = Store(postgres_database)
    mnist = store.scoped("mnist", "2nn")
    mnist.commit_round(RoundRecord(1, mnist.start_run({}), 1, 0.5, 1.0, 2, 10, 10, 1.0, time.time()), np.ones(4, np.float32))
    store.close()
    # As a database from before the funnel, privacy and the shared secrets.
    with psycopg.connect(postgres_database.url, autocommit=True) as db:
        db.execute("ALTER TABLE rounds DROP COLUMN funnel, DROP COLUMN privacy")
        db.execute("DROP TABLE secrets, revoked_sessions")
        db.execute("UPDATE webfl_schema SET version = 2")
    store = Store(postgres_database)
    (old,) = store.scoped("mnist", "2nn").history()
    assert old.round == 1 and old.funnel is None and old.privacy is None
    assert len(store.secret("session")) == 32 and store.query("SELECT version FROM webfl_schema") == [(SCHEMA_VERSION,)]
    store.close()
    Store(postgres_database).close()  # migrating twice is a no-op

    with psycopg.connect(postgres_database.url, autocommit=True) as db:
        db.execute("UPDATE webfl_schema SET version = 99")
    with pytest.raises(NewerSchema, match="schema 99"):
        Store(postgres_database)


def test_a_commit_is_all_or_nothing_on_postgres(postgres_database):
    store = Store(postgres_database)
    mnist = store.scoped("mnist", "2nn")
    record = RoundRecord(1, mnist.start_run({}), 1, 0.5, 1.0, 2, 10, 10, 1.0, time.time())
    mnist.commit_round(record, np.ones(4, np.float32))
    with pytest.raises(psycopg.errors.UniqueViolation):
        mnist.commit_round(record, np.full(4, 2, np.float32))  # round 1 again: its checkpoint must not land
    assert mnist.latest_checkpoint()[1].tolist() == [1] * 4 and len(mnist.history()) == 1
    store.close()


def _drop_connections(url: PostgresURL) -> None:
    """What a database restart does to the members' connections."""
    with psycopg.connect(url.url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'webfl'")


def test_a_connection_the_database_dropped_fails_that_call_and_the_next_one_reconnects(postgres_database):
    store = Store(postgres_database)
    mnist = store.scoped("mnist", "2nn")
    run = mnist.start_run({})
    _drop_connections(postgres_database)
    with pytest.raises(DatabaseUnavailable, match="lost the database"):
        mnist.commit_round(RoundRecord(1, run, 1, 0.5, 1.0, 2, 10, 10, 1.0, time.time()), np.ones(4, np.float32))
    assert mnist.history() == [] and mnist.runs()[0]["status"] == "running"  # nothing half-written
    mnist.end_run(run, "failed")
    assert mnist.runs()[0]["status"] == "failed"
    store.close()


def test_while_the_database_stays_away_calls_fail_at_once_instead_of_each_waiting(postgres_database, postgres_cluster):
    store = Store(postgres_database)
    name = postgres_database.url.rpartition("/")[2]
    with psycopg.connect(postgres_cluster.url, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE {name} WITH (FORCE)")  # its connections go, and it does not come back
    with pytest.raises(DatabaseUnavailable, match="lost the database"):
        store.task_definitions()
    with pytest.raises(DatabaseUnavailable, match="cannot open the database"):
        store.task_definitions()  # the reconnect is refused...
    t0 = time.monotonic()
    with pytest.raises(DatabaseUnavailable, match="trying again shortly"):
        store.task_definitions()  # ...and for a while nothing waits on the network again
    assert time.monotonic() - t0 < 0.5
    store.close()


def test_a_request_the_database_cannot_answer_is_a_503_and_the_member_carries_on(tmp_path, postgres_database):
    with TestClient(create_app(Settings(data_dir=tmp_path, admin_token=TOKEN, database=postgres_database))) as client:
        assert client.get("/api/history", headers=AUTH).status_code == 200
        _drop_connections(postgres_database)
        lost = client.get("/api/history", headers=AUTH)
        assert lost.status_code == 503 and "lost the database" in lost.json()["error"] and "webfl-test" not in lost.text
        assert client.get("/api/history", headers=AUTH).status_code == 200  # connected again


# -- the URL and start-up --------------------------------------------------------------------


def test_a_database_url_prints_without_its_password():
    url = parse_database_url("postgresql://webfl:s3cret@db.internal:5432/webfl")
    assert "s3cret" not in str(url) and "s3cret" not in repr(url) and "s3cret" not in repr(Settings(database=url))
    assert str(url) == "postgresql://webfl:***@db.internal:5432/webfl"


@pytest.mark.parametrize("url", ["mysql://webfl@127.0.0.1/webfl", "postgresql://webfl@127.0.0.1:port/webfl", "/var/lib/webfl.db",
                                 "postgresql://webfl@[::1/webfl", "postgresql://webfl@127.0.0.1/webfl?no_such_option=1"])
def test_a_url_that_is_no_postgresql_url_is_refused_with_what_one_looks_like(url):
    with pytest.raises(ValueError, match="postgresql://USER@HOST:PORT/DATABASE"):
        parse_database_url(url)


def _serve(tmp_path, database: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "webfl.cli", "serve", "--port", str(free_port()), "--data-dir", str(tmp_path / "data"), "--database", database]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env={"WEBFL_ADMIN_TOKEN": TOKEN, "PATH": "/usr/bin:/bin"})


def test_a_wrong_database_stops_serve_with_a_message_not_a_traceback(tmp_path, postgres_cluster):
    bad_password = postgres_cluster.url.replace(postgres_cluster.password, "not-the-password")
    refused = _serve(tmp_path, bad_password)
    assert refused.returncode == 3 and "password authentication failed" in refused.stderr, refused.stderr
    assert "not-the-password" not in refused.stdout + refused.stderr and "Traceback" not in refused.stderr
    nobody = _serve(tmp_path, f"postgresql://webfl@127.0.0.1:{free_port()}/webfl")
    assert nobody.returncode == 3 and "cannot open the database" in nobody.stderr and "Traceback" not in nobody.stderr
    garbage = _serve(tmp_path, "redis://127.0.0.1:6379/0")
    assert garbage.returncode == 2 and "--database takes a postgresql://" in garbage.stderr and "Traceback" not in garbage.stderr


# -- a real server on PostgreSQL ---------------------------------------------------------------


def test_serve_on_postgres_resumes_after_kill_9_from_another_data_folder(tmp_path, postgres_database):
    """Nothing a member keeps locally must survive: the restarted one has an empty data folder."""
    url, port = postgres_database.url, free_port()
    first = start_server(tmp_path / "first", "--database", url, port=port, env={"WEBFL_CRASHPOINT": "checkpoint:3"})
    volunteers = simulator(first, "--clients", "3")  # reconnects by itself across the restart
    second = None
    try:
        first.wait_for(lambda s: s["volunteers"]["ready"] == 3, timeout=60, what="3 ready volunteers")
        config = {"rounds": 4, "clients_per_round": 3, "local_epochs": 1, "server_opt": "fedavgm:lr=1,momentum=0.5"}
        assert first.api("POST", "/api/rounds", config)[0] == 202
        assert first.proc.wait(timeout=120) == -9  # killed inside round 3's transaction
        store = Store(PostgresURL(url))
        committed = [r.to_dict() for r in store.scoped("mnist", "2nn").history()]
        store.close()
        assert [r["round"] for r in committed] == [1, 2]  # not a trace of round 3

        second = start_server(tmp_path / "second", "--database", url, port=port)
        status = second.wait_for(lambda s: s["run"] and not s["run"]["running"], timeout=180, what="the resumed run to end")
        assert status["run"]["id"] == 1 and status["run"]["rounds_done"] == 4
        assert [h["round"] for h in status["history"]] == [1, 2, 3, 4] and status["history"][:2] == committed
        assert "resuming run 1 after 2 committed round(s) of 4" in second.log()
        store = Store(PostgresURL(url))
        assert store.query("SELECT status FROM runs WHERE id = 1") == [("completed",)]
        assert store.component_states(1)["server_opt"][0] == 4
        store.close()
        # Its data folder holds its log and nothing else: no SQLite file, no key.
        assert [p.name for p in (tmp_path / "second").iterdir()] == [second.log_path.name]
    finally:
        stop(volunteers)
        first.stop(kill=True)
        if second is not None:
            second.stop()
