"""The model reaches those who need it: a commit sends every volunteer one ``model_notice``
(the status and the newest history with it);
the model (or the delta from the version a volunteer holds) goes with its next task; and
``/models/<digest>.bin`` serves exactly the committed model, immutable."""

import asyncio
import hashlib
from types import SimpleNamespace

import numpy as np
from rounds_harness import TASK, RecordingCoordinator, Volunteer, make_engine, make_engine_with, small, until
from starlette.testclient import TestClient

from webfl.core.data import Dataset
from webfl.core.downlink import ModelChain, digest, get_downlink, model_url
from webfl.core.protocol import Message, decode, encode
from webfl.core.volunteer import SessionState
from webfl.core.volunteer import Volunteer as CoreVolunteer
from webfl.server.app import create_app
from webfl.server.config import Settings
from webfl.server.engine import RunConfig
from webfl.server.rounds.announce import Announcement, Announcer, history_fields

SIZE = TASK.build_model().size
TOKEN = "notice-test-token"


def models_before_tasks(v: Volunteer) -> list[tuple[int, list]]:
    """For each task in ``v``'s inbox: its model version and the model frames since the
    previous task (for the first, since joining: the full model 0 comes first)."""
    out, since = [], []
    for m in v.inbox:
        if m.type == "model":
            since.append(m)
        elif m.type == "task":
            out.append((m["model_version"], since))
            since = []
    return out


def test_a_commit_sends_a_notice_to_all_and_the_model_only_to_the_selected_with_their_task(tmp_path):
    async def main():
        engine, coord, vs = make_engine_with(tmp_path, *[f"v{i}" for i in range(6)])
        config = dict(rounds=2, clients_per_round=2, downlink="delta:q8", deadline_s=30, max_wait_s=0)
        engine.start(RunConfig.from_json(config))
        await until(lambda: sum(v.task() is not None for v in vs) == 2, what="round 1's tasks")
        first = [v for v in vs if v.task() is not None]
        for i, v in enumerate(first):
            assert (await v.update(small(i))).accepted
        await until(lambda: engine.model_version == 1, what="commit 1")
        v1 = engine.commits.chain.digest
        # Round 2 picks two of the four still ready (round 1's two have not said ready again).
        await until(lambda: sum(len(v.of("task")) for v in vs) == 4, what="round 2's tasks")
        second = [v for v in vs if v not in first and v.task() is not None]
        assert len(second) == 2
        for v in vs:
            assert [(m["model_version"], m["digest"], m["url"]) for m in v.of("model_notice")] == [(1, v1, model_url(v1))]
            if v in second:
                ((version, frames),) = models_before_tasks(v)
                # The delta from the model it holds, just before the task, and it reproduces v1.
                assert version == 1 and [(f.fields.get("base_version"), f["model_version"]) for f in frames] == [(None, 0), (0, 1)]
                assert frames[-1]["digest"] == v1
            else:
                assert [m["model_version"] for m in v.of("model")] == [0]  # on joining; no model since
        for i, v in enumerate(second):
            assert (await v.update(small(10 + i))).accepted
        await until(lambda: not engine.running, what="the run to end")
        first_round, second_round = engine.history
        notice = max(len(encode(m)) for v in vs for m in v.of("model_notice"))
        # bytes_down counts the notices to all six and, in round 2, the two deltas.
        assert first_round.bytes_down < 6 * notice + 2 * 1000 < second_round.bytes_down < SIZE * 4

    asyncio.run(main())


def test_a_volunteer_behind_the_chain_gets_the_full_model_with_its_task(tmp_path):
    async def main():
        engine, coord = make_engine(tmp_path)
        a, late = Volunteer(engine, coord, "a"), Volunteer(engine, coord, "late")
        a.ready()
        engine.start(RunConfig.from_json(dict(rounds=6, clients_per_round=1, downlink="delta:q8", deadline_s=30, max_wait_s=0)))
        keep = engine.commits.chain.keep
        for r in range(keep + 1):  # past the chain's memory of model 0
            await until(lambda: len(a.of("task")) == r + 1, what=f"task {r + 1}")
            assert (await a.update(small(r))).accepted
            await until(lambda: engine.model_version == r + 1, what=f"commit {r + 1}")
            a.ready() if r < keep else None
        # Each later task of a's came with one delta, from the model it trained last.
        assert [[(f["base_version"], f["model_version"]) for f in frames] for _, frames in models_before_tasks(a)[1:]] == [[(r, r + 1)] for r in range(keep)]
        late.ready()
        await until(lambda: late.task() is not None, what="the late volunteer's task")
        ((version, frames),) = models_before_tasks(late)
        assert version == keep + 1 and [f["model_version"] for f in frames] == [0, keep + 1] and "base_version" not in frames[-1].fields
        np.testing.assert_array_equal(frames[-1].arrays[0], engine.commits.chain.held)
        assert len(late.of("model_notice")) == keep + 1
        await engine.stop()

    asyncio.run(main())


def test_fedbuff_hands_each_task_what_brings_the_volunteer_to_its_model(tmp_path):
    async def main():
        engine, coord = make_engine(tmp_path)
        vs = [Volunteer(engine, coord, p) for p in "abc"]
        for v in vs:
            v.ready()
        engine.start(RunConfig.from_json({"mode": "fedbuff", "rounds": 4, "clients_per_round": 2, "buffer_size": 1, "max_staleness": 3, "deadline_s": 30}))
        for r in range(4):
            await until(lambda: sum(1 for v in vs if v.task() is not None and engine.tasks.holds(v.id)) >= 1, what="a task")
            v = next(v for v in vs if engine.tasks.holds(v.id))
            assert (await v.update(small(r))).accepted
            await until(lambda: engine.model_version == r + 1 or not engine.running, what=f"commit {r + 1}")
            v.ready()
        await until(lambda: not engine.running, what="the run to end")
        for v in vs:
            held = 0  # from joining
            for version, frames in models_before_tasks(v):
                held = frames[-1]["model_version"] if frames else held
                assert held == version, f"{v.id} got a task on model {version} holding {held}"

    asyncio.run(main())


def test_a_prepared_step_changes_neither_the_digest_nor_the_served_bytes_until_it_is_advanced():
    params = np.random.default_rng(0).normal(size=SIZE).astype(np.float32)
    chain = ModelChain(params, 3)
    before, raw = chain.digest, chain.raw()
    step = chain.prepare(params + 1, 4, get_downlink("fp16"), np.random.default_rng(1))
    assert chain.digest == before and chain.raw() == raw and chain.version == 3
    chain.advance(step)
    assert chain.digest == digest(step.held) != before and chain.raw() == step.held.astype("<f4").tobytes()


def test_models_url_serves_the_committed_model_bytes_immutable_and_404_otherwise(tmp_path):
    rng = np.random.default_rng(3)
    data = Dataset(rng.integers(0, 256, (64, TASK.num_features), dtype=np.uint8), rng.integers(0, 10, 64, dtype=np.uint8))
    settings = Settings(data_dir=tmp_path, admin_token=TOKEN, model=TASK.model)
    with TestClient(create_app(settings)) as client:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        v = CoreVolunteer(data)
        with client.websocket_connect("/ws") as ws:
            ws.send_bytes(v.hello())
            for _ in range(3):  # welcome, the model, status
                for out in v.receive(ws.receive_bytes()):
                    ws.send_bytes(out)
            assert v.state is SessionState.IDLE and v.model_version == 0
            initial = digest(v.params)
            r = client.get(model_url(initial))
            assert r.status_code == 200 and r.content == v.params.astype("<f4").tobytes()
            assert r.headers["cache-control"] == "public, max-age=31536000, immutable" and r.headers["etag"] == f'"{initial}"'
            assert hashlib.sha256(r.content).hexdigest()[:32] == initial
            assert client.get(model_url(initial), headers={"If-None-Match": f'"{initial}"'}).status_code == 304
            body = {"rounds": 2, "clients_per_round": 1, "downlink": "delta:q8", "deadline_s": 30, "max_wait_s": 0}
            assert client.post("/api/rounds", json=body, headers=auth).status_code == 202
            notices, trained = [], []
            while len(notices) < 2:
                frame = ws.receive_bytes()
                outs = v.receive(frame)
                if (msg := decode(frame)).type == "model_notice":
                    notices.append((msg["model_version"], msg["digest"], msg["url"]))
                elif msg.type == "task":
                    # The task came with the model it trains, and the URL serves exactly it
                    # (still current: the next commit needs this volunteer's update).
                    assert v.model_version == msg["model_version"]
                    served = client.get(model_url(digest(v.params)))
                    assert served.status_code == 200 and served.content == v.params.astype("<f4").tobytes()
                    trained.append((v.model_version, digest(v.params)))
                    outs.append(v.train())
                for out in outs:
                    ws.send_bytes(out)
            # Each notice names the model the next task brought (its digest and URL).
            assert [n[:2] for n in notices[:1]] == trained[1:] and [n[0] for n in notices] == [1, 2]
            assert all(url == model_url(d) for _, d, url in notices) and v.model_version == 1 and v.snapshot()["latest_version"] == 2
        current = notices[-1][1]
        r = client.get(model_url(current))
        assert r.status_code == 200 and hashlib.sha256(r.content).hexdigest()[:32] == current
        assert client.get(model_url(initial)).status_code == 404  # superseded: only the committed one answers
        for bad in ("0" * 32, "../admin_token", "A" * 32, "x"):
            assert client.get(f"/models/{bad}.bin").status_code == 404


class RawCoordinator(RecordingCoordinator):
    """Also keeps every published frame's bytes, to see what was encoded once."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[bytes] = []

    async def publish(self, frame, to=None):
        self.frames.append(frame)
        return await super().publish(frame, to)


def test_announcements_are_paced_one_frame_a_volunteer_and_the_newest_reaches_everyone_once(tmp_path):
    async def main():
        coord = RawCoordinator()
        ids = [f"v{i}" for i in range(250)]
        for i in ids:
            coord.inbox[i] = []
        counted: dict[int, int] = {}
        history: list[SimpleNamespace] = []

        async def sent(index, nbytes):
            counted[index] = counted.get(index, 0) + nbytes

        def announcement(version):
            history.append(SimpleNamespace(round=version, accuracy=version / 10))  # as a commit does, before announcing
            fields = {"model_version": version, "digest": "d", "url": model_url("d"), "state": "idle", "round": version,
                      "connected": 250, "run": [version, 9], "privacy": None, "ended": None}
            return Announcement(version, version, fields)

        announcer = Announcer(coord, lambda: ids, sent, lambda since, upto: history_fields(history, since, upto), told=0)
        announcer.announce(announcement(1))
        await until(lambda: coord.inbox["v0"], what="the first batch")
        assert not coord.inbox["v249"]  # paced: the rest waits
        announcer.announce(announcement(2))
        announcer.announce(announcement(3))  # before the next batch: 2 is never sent
        await announcer.idle()
        # One frame a volunteer per commit it hears of: the notice, with the status in it.
        assert all(m.type == "model_notice" for i in ids for m in coord.inbox[i])
        got = {i: [m["model_version"] for m in coord.inbox[i]] for i in ids}
        # The first batch got 1, then 3 in a second pass; the others 3 once.
        assert all(got[i] == [1, 3] for i in ids[:100]) and all(got[i] == [3] for i in ids[100:])
        # 1 had not reached everyone when 3 went out, so 3 carries the history from the start.
        first, third = coord.inbox["v0"]
        assert (first["history_from"], first["history"]) == (0, [[1, 0.1]])
        assert (third["history_from"], third["history"], third["run"]) == (0, [[1, 0.1], [2, 0.2], [3, 0.3]], [3, 9])
        assert announcer.told == 3 and counted == {0: 100 * len(coord.frames[0]), 2: 250 * len(coord.frames[-1])}
        # 3 reached everyone: the next notice carries only the newest entry, encoded once for all.
        del coord.frames[:]
        announcer.announce(announcement(4))
        await announcer.idle()
        assert len(set(coord.frames)) == 1 and len(coord.frames) == 3  # three batches, the same bytes
        assert all([m["model_version"] for m in coord.inbox[i]][-1:] == [4] and len(coord.inbox[i]) == len(got[i]) + 1 for i in ids)
        assert (coord.inbox["v249"][-1]["history_from"], coord.inbox["v249"][-1]["history"]) == (3, [[4, 0.4]])
        # A volunteer rebuilds from these notices the history a full status gives one joining now.
        for i in ("v0", "v249"):
            v = CoreVolunteer()
            for m in coord.inbox[i]:
                v.receive(encode(m))
            assert v.history == [[r.round, r.accuracy] for r in history] and v.snapshot()["latest_version"] == 4

    asyncio.run(main())


def test_an_idle_volunteer_gets_one_frame_a_commit_and_the_same_history_as_one_joining_after(tmp_path):
    async def main():
        engine, coord, (trainer,) = make_engine_with(tmp_path, "trainer")
        idle = Volunteer(engine, coord, "idle")  # never ready: never selected
        joined = len(idle.inbox)  # the model frame (the socket adds the full status)
        engine.start(RunConfig.from_json(dict(rounds=3, clients_per_round=1, deadline_s=30, max_wait_s=0)))
        for r in range(3):
            await until(lambda: len(trainer.of("task")) == r + 1, what=f"task {r + 1}")
            assert (await trainer.update(small(r))).accepted
            await until(lambda: engine.model_version == r + 1, what=f"commit {r + 1}")
            await engine.commits.announcer.idle()
            trainer.ready()
        await until(lambda: not engine.running, what="the run to end")
        # The run's start and end as a status each; between them one notice a commit, no status.
        assert [m.type for m in idle.inbox[joined:]] == ["status"] + ["model_notice"] * 3 + ["status"]
        notices = idle.of("model_notice")
        assert [(m["model_version"], m["run"], m["history_from"], len(m["history"])) for m in notices] == [
            (1, [1, 3], 0, 1), (2, [2, 3], 1, 1), (3, [3, 3], 2, 1)]
        assert idle.inbox[-1]["ended"] == "completed"
        incremental, full = CoreVolunteer(), CoreVolunteer()
        for m in idle.inbox[joined:-1]:  # the run's start and the notices
            incremental.receive(encode(m))
        full.receive(engine.status_frame())  # what a volunteer joining now gets after welcome
        assert incremental.history == full.history == [[r.round, r.accuracy] for r in engine.history] and len(full.history) == 3

    asyncio.run(main())
