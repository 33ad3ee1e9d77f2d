"""Several real ``webfl serve`` members on one real redis-server (and one data folder,
until the store is PostgreSQL): volunteers on every member train one federation, the
model is the one a single process computes from the same updates and is served by
every member, and the cluster rides out a follower restart and a kill -9 of its leader.
These start processes: keep them few."""

import os
import sqlite3
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from servers import TOKEN, start_member
from test_server import MODEL_SIZE, Client, global_params

from webfl.core.codecs import Encoded, get_codec
from webfl.core.downlink import digest
from webfl.core.protocol import CLOSE_PROTOCOL_ERROR, CLOSE_UNSUPPORTED, Message, encode
from webfl.core.tasks import get_task
from webfl.server.engine import RunConfig
from webfl.server.rounds.validation import fold

pytest.importorskip("redis")

RUN = {"rounds": 2, "clients_per_round": 6, "min_updates": 6, "deadline_s": 90, "select_timeout_s": 30}


def leader_of(members) -> object:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for m in members:
            if m.proc.poll() is None and m.status()["cluster"]["role"] == "leader":
                return m
        time.sleep(0.2)
    raise AssertionError("no leader in 30 s")


def delta(i: int, round_: int) -> np.ndarray:
    """Volunteer ``i``'s update in ``round_``: small multiples of 2**-10, so every sum of
    them is exact in float32 and the aggregate cannot depend on arrival order."""
    rng = np.random.default_rng([i, round_])
    return (rng.integers(-8, 9, MODEL_SIZE) * 2.0**-10).astype(np.float32)


def single_process_model(n: int, run: dict = RUN) -> np.ndarray:
    """What one process commits from the same updates: the run's own rule and optimizer."""
    config = RunConfig.from_json({**run, "local_epochs": 1})
    params = get_task("mnist").build_model().init(0)
    rule, opt, codec = config.rule(), config.optimizer(), get_codec("none")
    for round_ in (1, 2):
        rule.begin(MODEL_SIZE, n)
        for i in range(n):
            assert fold(rule, codec, Encoded({}, [delta(i, round_)]), config.weight(100)) is None
        params = opt.step(params, rule.finish())
    return params


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return resp.read()


# fedavg: followers fold shares; median (buffered): followers vet and ship the updates, the leader folds them.
@pytest.mark.parametrize("aggregator", ["fedavg", "median"])
def test_volunteers_on_every_member_commit_what_one_process_would_and_every_member_serves_it(tmp_path, redis_server, aggregator):
    run = {**RUN, "aggregator": aggregator}
    data = tmp_path / "data"
    members = [start_member(data, redis_server.url, f"m{i}") for i in range(3)]
    try:
        leader = leader_of(members)
        clients = [Client(members[i % 3]) for i in range(6)]
        initial = [c.join()[1] for c in clients]  # each member's volunteers get the leader's model
        assert {digest(m.arrays[0]) for m in initial} == {digest(global_params(leader))}
        follower = next(m for m in members if m is not leader)
        # Only the leader runs rounds: a follower passes run control on to it.
        assert follower.api("POST", "/api/rounds", {**run, "rounds": 0})[0] == 400  # the leader's verdict, relayed
        assert follower.api("POST", "/api/rounds", run, token="wrong")[0] == 401
        code, body = follower.api("POST", "/api/rounds", run)
        assert code == 202 and body["run"] == 1
        shown = follower.status()["run"]  # read-your-writes: the follower read the leader's new status before answering
        assert shown["id"] == 1 and shown["running"]
        assert follower.api("POST", "/api/rounds", run)[0] == 409  # the leader's run is active
        for round_ in (1, 2):
            tasks = [c.recv("task", timeout=60) for c in clients]
            assert {t["round"] for t in tasks} == {round_}
            for i, (c, task) in enumerate(zip(clients, tasks)):
                assert c.update(task, delta(i, round_)).type == "accept"
                c.send("ready", num_examples=100)
        notices = [c.recv("model_notice", timeout=60) for c in clients]
        while any(n["model_version"] != 2 for n in notices):
            notices = [n if n["model_version"] == 2 else c.recv("model_notice", timeout=60) for c, n in zip(clients, notices)]
        status = leader.wait_for(lambda s: not s["run"]["running"], timeout=60, what="the run to complete")
        assert [h["round"] for h in status["history"]] == [1, 2] and status["connected"] == 6
        expected = single_process_model(6, run)
        (model_digest,) = {n["digest"] for n in notices}
        assert model_digest == digest(expected)
        for m in members:
            # Every member: the leader's status, the model bytes by digest, its own copy.
            # Heartbeats are a beat (1 s) old at most.
            s = m.wait_for(lambda s: s["model_version"] == 2 and sum(x["volunteers"] for x in s["cluster"]["members"]) == 6,
                           timeout=20, what="the commit and every member's heartbeat")
            assert s["cluster"]["member"] == m.proc.args[m.proc.args.index("--member-id") + 1]
            assert s["cluster"]["leader"] == status["cluster"]["leader"] and len(s["cluster"]["members"]) == 3
            assert s["connected"] == 6 and [h["round"] for h in s["history"]] == [1, 2]
            np.testing.assert_array_equal(np.frombuffer(fetch(f"{m.url}/models/{model_digest}.bin"), "<f4"), expected)
            np.testing.assert_array_equal(global_params(m), expected)
        # Hostile frames are refused at the follower's edge with the usual close codes.
        for frame, code in (("text", CLOSE_UNSUPPORTED), (encode(Message("wait", {"retry_after_s": 1})), CLOSE_PROTOCOL_ERROR), (b"\x00" * 9, CLOSE_PROTOCOL_ERROR)):
            bad = Client(follower)
            bad.join()
            assert bad.closed_with(frame)[0] == code
        after = leader.wait_for(lambda s: s["connected"] == 6 and s["rejections"].get("protocol", 0) >= 3, timeout=20,
                                what="the follower's refusals counted by the leader")
        assert after["model_version"] == 2
    finally:
        for m in members:
            m.stop()


def simulate(server_url: str, rounds: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "webfl.cli", "simulate", "--server", server_url, "--clients", "3", "--rounds", str(rounds),
           "--local-epochs", "1", "--timeout-s", "240"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "WEBFL_ADMIN_TOKEN": TOKEN})


def test_a_kill_9_of_the_leader_mid_round_the_run_finishes_behind_nginx_every_round_once(tmp_path, redis_server, nginx_proxy):
    data, lease = tmp_path / "data", 3.0
    # The first member SIGKILLs itself mid-round 3, with an accepted update only in its memory:
    # its own volunteer's, or the share of those nginx sent to the second member.
    first = start_member(data, redis_server.url, "first", lease_s=lease, env={"WEBFL_CRASHPOINT": "training:3"})
    assert leader_of([first]) is first
    second = start_member(data, redis_server.url, "second", lease_s=lease)
    proxy = nginx_proxy([first.url.removeprefix("http://"), second.url.removeprefix("http://")])
    sim = simulate(proxy.url, 6)
    try:
        try:
            assert first.proc.wait(timeout=180) == -9
        except subprocess.TimeoutExpired:
            raise AssertionError(f"no kill in round 3: {first.status()['cluster']}\n{first.log()[-3000:]}") from None
        killed = time.monotonic()
        second.wait_for(lambda s: s["cluster"]["role"] == "leader", timeout=3 * lease, what="the follower to take the lease")
        took = time.monotonic() - killed
        out, err = sim.communicate(timeout=240)
        assert sim.returncode == 0, out + err + second.log()[-3000:]
    finally:
        if sim.poll() is None:
            sim.kill()
            sim.communicate()
        first.stop(kill=True)
        second.stop()
    assert took <= lease + 1.5  # expiry plus one beat (and a status poll)
    assert "resuming run 1 after 2 committed round(s)" in second.log()
    assert "completed with 6 round(s)" in out
    with sqlite3.connect(data / "webfl.sqlite3") as db:
        assert db.execute("SELECT id, status FROM runs").fetchall() == [(1, "completed")]
        assert db.execute("SELECT round, run_id FROM rounds ORDER BY round").fetchall() == [(r, 1) for r in range(1, 7)]


def test_a_follower_restart_loses_no_volunteer_for_good(tmp_path, redis_server, nginx_proxy):
    """The volunteers (a simulator that only volunteers, so they stay when the run is done)
    come back through nginx after their member's kill -9, none counted twice, and the run
    goes on to its last round."""
    data, lease = tmp_path / "data", 3.0
    leader = start_member(data, redis_server.url, "leader", lease_s=lease)
    assert leader_of([leader]) is leader
    follower = start_member(data, redis_server.url, "follower", lease_s=lease)
    port = int(follower.url.rsplit(":", 1)[1])
    proxy = nginx_proxy([leader.url.removeprefix("http://"), follower.url.removeprefix("http://")])
    cmd = [sys.executable, "-m", "webfl.cli", "simulate", "--server", proxy.url, "--clients", "3", "--timeout-s", "240"]
    sim = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    restarted = None
    try:
        leader.wait_for(lambda s: s["connected"] == 3 and all(m["volunteers"] for m in s["cluster"]["members"]),
                        timeout=120, what="volunteers on both members")
        code, answer = leader.api("POST", "/api/rounds", {"rounds": 8, "local_epochs": 1, "deadline_s": 30})
        assert code == 202, answer
        spread = leader.wait_for(lambda s: s["run"] and s["run"]["rounds_done"] >= 1, timeout=120, what="a round done")
        follower.stop(kill=True)
        restarted = start_member(data, redis_server.url, "follower", port=port, lease_s=lease)
        # Its volunteers are back (on either member), and none is counted twice.
        back = leader.wait_for(lambda s: s["connected"] == 3 and sum(m["volunteers"] for m in s["cluster"]["members"]) == 3,
                               timeout=90, what="every volunteer back")
        assert back["cluster"]["leader"] == "leader"
        done = leader.wait_for(lambda s: not s["run"]["running"], timeout=180, what="the run's end")
        assert done["run"]["rounds_done"] == 8 and done["run"]["rounds_done"] > spread["run"]["rounds_done"], done["run"]
    finally:
        sim.kill()
        sim.communicate()
        for m in (restarted, follower, leader):
            if m is not None:
                m.stop()
    with sqlite3.connect(data / "webfl.sqlite3") as db:
        assert db.execute("SELECT round FROM rounds ORDER BY round").fetchall() == [(r,) for r in range(1, 9)]
