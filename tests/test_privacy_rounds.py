"""Differential privacy wired into the round, in process: settings at the boundary, the
task's clip, the noised release in every committed model, the accountant charged once per
commit against dp-accounting, max_epsilon, FedBuff's one update per volunteer per commit,
Poisson selection, and the task's total over its runs (kill -9 and resume: test_privacy_resume.py)."""

import asyncio
import csv
import io
import json
import itertools
import time

import dp_accounting
import numpy as np
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from rounds_harness import TASK, Volunteer, make_engine, make_engine_with, small, until
from starlette.testclient import TestClient

from webfl.core.privacy import l2_clip
from webfl.core.protocol import Message, encode
from webfl.core.volunteer import Volunteer as CoreVolunteer
from webfl.server.app import create_app
from webfl.server.config import Settings
from webfl.server.engine import RunConfig
from webfl.server.rounds.selection import poisson
from webfl.server.store import RoundRecord
from webfl.server.web.export import history_csv
from webfl.server.web.metrics import registry_for

SIZE = TASK.build_model().size


def rdp_epsilon(z: float, rounds: int, delta: float = 1e-5, q: float | None = None) -> float:
    """dp-accounting called directly: ``rounds`` Gaussian releases (Poisson-subsampled with ``q``)."""
    event = dp_accounting.GaussianDpEvent(z)
    if q is not None:
        event = dp_accounting.PoissonSampledDpEvent(q, event)
    acc = dp_accounting.rdp.RdpAccountant()
    acc.compose(event, rounds)
    return acc.get_epsilon(delta)


def dp_run(dp: dict, **kw) -> RunConfig:
    return RunConfig.from_json({"deadline_s": 30, "max_wait_s": 0, "dp": dp, **kw})


@pytest.mark.parametrize(
    "body, message",
    [
        ({"dp": {"clip": 1.0}}, "dp.noise_multiplier is required"),
        ({"dp": {"noise_multiplier": -1, "clip": 1.0}}, "dp.noise_multiplier"),
        ({"dp": {"noise_multiplier": 1, "clip": 1.0, "delta": 1.0}}, "dp.delta"),
        ({"dp": {"noise_multiplier": 1, "clip": 1.0, "sampling": "poisson"}}, "dp.population is required"),
        ({"dp": "yes"}, "dp must be an object"),
        ({"aggregator": "median", "dp": {"noise_multiplier": 1, "clip": 1.0}}, "dp cannot be used with aggregator 'median'"),
        ({"norm_bound": "x=3", "dp": {"noise_multiplier": 1, "clip": 1.0}}, "relative to the median"),
        ({"mode": "fedbuff", "dp": {"noise_multiplier": 1, "clip": 1.0, "sampling": "poisson", "population": 100}}, "fedbuff"),
    ],
)
def test_bad_or_unsound_dp_settings_are_refused_with_the_reason(body, message):
    with pytest.raises(ValueError, match=message):
        RunConfig.from_json(body)


HOSTILE = [[], {}, "x", None, True, 1e308, -0.0, 10**30, [1], {"a": 1}, "adaptive", 0, 1]
DP_KEYS = ["noise_multiplier", "clip", "delta", "max_epsilon", "sampling", "population", "accountant",
           "initial_clip", "target_quantile", "clip_lr", "count_noise"]
BASES = [{"noise_multiplier": 1, "clip": 1}, {"noise_multiplier": 1, "clip": "adaptive"},
         {"noise_multiplier": 1, "clip": 1, "sampling": "poisson", "population": 100, "delta": 1e-6}]


def test_any_hostile_dp_value_is_a_value_error_never_a_crash():
    """The API answers ValueError with a 400; anything else would be a 500."""
    for key, value, base, mode in itertools.product(DP_KEYS, HOSTILE, BASES, ("sync", "fedbuff")):
        try:
            RunConfig.from_json({"mode": mode, "dp": {**base, key: value}})
        except ValueError:
            pass
    for value in HOSTILE:
        try:
            RunConfig.from_json({"dp": value})
        except ValueError:
            pass


def test_dp_settings_round_trip_so_a_resumed_run_reparses_them():
    config = dp_run({"noise_multiplier": 2, "clip": "adaptive", "max_epsilon": 9}, clients_per_round=40)
    assert config.dp.expected_cohort == 40 and config.dp.adaptive.count_noise == 40 / 20
    again = RunConfig.from_json(config.to_dict())
    assert again == config and again.to_dict()["dp"]["clip"] == "adaptive"
    assert RunConfig.from_json({}).to_dict()["dp"] is None and RunConfig.from_json({"dp": None}).dp is None
    # FedBuff divides by its buffer, not by clients_per_round.
    assert RunConfig.from_json({"mode": "fedbuff", "buffer_size": 7, "dp": {"noise_multiplier": 1, "clip": 1}}).dp.expected_cohort == 7


def test_the_api_answers_400_for_a_bad_dp_value_and_describes_the_dp_field(tmp_path):
    app = create_app(Settings(data_dir=tmp_path, admin_token="t", model="softmax"))
    auth = {"Authorization": "Bearer t"}
    with TestClient(app) as client:
        r = client.post("/api/rounds", json={"rounds": 1, "dp": {"noise_multiplier": 1, "clip": 0}}, headers=auth)
        assert r.status_code == 400 and "dp.clip" in r.json()["error"]
        r = client.post("/api/rounds", json={"rounds": 1, "aggregator": "multikrum", "dp": {"noise_multiplier": 1, "clip": 1}}, headers=auth)
        assert r.status_code == 400 and "Multi-Krum" in r.json()["error"]
        (dp,) = [s for s in client.get("/api/run-settings", headers=auth).json()["settings"] if s["name"] == "dp"]
        assert dp == {"name": "dp", "type": "json", "default": None}
        # The widget is the volunteer page's twin: both have the place that states the guarantee.
        for page in ("/", "/embed?task=mnist"):
            assert 'data-testid="privacy"' in client.get(page).text


def test_every_released_model_carries_the_noise_and_the_history_the_accountants_epsilon(tmp_path):
    z, clip, m, rounds = 1.0, 0.5, 3, 2

    async def main():
        engine, coord, vs = make_engine_with(tmp_path, *[f"v{i}" for i in range(m)])
        engine.start(dp_run({"noise_multiplier": z, "clip": clip}, rounds=rounds, clients_per_round=m))
        # Before anyone trains, every volunteer is told the run is private (epsilon 0 so far).
        await until(lambda: all(v.task() for v in vs), what="the first tasks")
        assert all(v.of("status")[-1]["privacy"] == {"epsilon": 0.0, "delta": 1e-5, "clip": clip, "noise": True} for v in vs)
        for r in range(rounds):
            await until(lambda: all(v.task() and v.task()["round"] == r + 1 for v in vs), what=f"round {r + 1}'s tasks")
            assert {v.task()["clip"] for v in vs} == {clip}
            before = engine.params.copy()
            # One honest clipped update, one over the clip (re-clipped by the server), one small.
            deltas = [l2_clip(small(10 * r), clip)[0], small(10 * r + 1, scale=1.0), small(10 * r + 2, scale=1e-4)]
            for v, d in zip(vs, deltas):
                assert (await v.update(d)).accepted
                v.ready()
            await until(lambda: engine.model_version == r + 1, what=f"commit {r + 1}")
            noiseless = before + sum(l2_clip(d.astype(np.float64), clip)[0] for d in deltas) / m
            noise = (engine.params - noiseless) * m  # the noise added to the sum
            # A model equal to the noiseless aggregate would be a failure: the noise is z*C per coordinate.
            assert np.std(noise) == pytest.approx(z * clip, rel=0.05)
            assert abs(np.mean(noise)) < 5 * z * clip / np.sqrt(SIZE)
        await until(lambda: not engine.running, what="the run to end")
        status = engine.status()
        for r, entry in enumerate(status["history"]):
            assert entry["epsilon"] == pytest.approx(rdp_epsilon(z, r + 1), rel=1e-9)
            assert entry["privacy"]["clip"] == clip and entry["privacy"]["clipped_fraction"] == pytest.approx(2 / 3)
        privacy = status["run"]["privacy"]
        assert privacy["epsilon"] == pytest.approx(rdp_epsilon(z, rounds)) and privacy["task_epsilon"] == privacy["epsilon"]
        assert {k: privacy[k] for k in ("delta", "noise_multiplier", "clip", "sampling", "accountant")} == {
            "delta": 1e-5, "noise_multiplier": z, "clip": clip, "sampling": "none", "accountant": "rdp"}
        # The stored history is the same (a restart shows it), and the volunteers' status frame states it.
        assert [e.to_dict()["epsilon"] for e in engine.store.history()] == [e["epsilon"] for e in status["history"]]
        # The CSV download has a column each for epsilon and the round's privacy (JSON).
        rows = list(csv.DictReader(io.StringIO(history_csv(engine.store.history()))))
        assert [float(r["epsilon"]) for r in rows] == [e["epsilon"] for e in status["history"]]
        assert [json.loads(r["privacy"]) for r in rows] == [e["privacy"] for e in status["history"]]
        frame = vs[0].of("status")[-1]
        assert frame["privacy"] == {"epsilon": privacy["epsilon"], "delta": 1e-5, "clip": clip, "noise": True}
        # A volunteer session keeps what it states, and /metrics exports the number.
        session = CoreVolunteer()
        session.receive(encode(frame))
        assert session.snapshot()["privacy"] == frame["privacy"]
        scraped = {(s.name, s.labels.get("scope")): s.value for f in text_string_to_metric_families(generate_latest(registry_for(engine)).decode()) for s in f.samples}
        assert scraped[("webfl_privacy_epsilon", "run")] == pytest.approx(privacy["epsilon"])

    asyncio.run(main())


@pytest.mark.parametrize("bad", [{"epsilon": "3", "delta": 1e-5, "clip": 1, "noise": True}, {"epsilon": 1, "delta": -1, "clip": 1, "noise": True},
                                 {"epsilon": 1, "delta": 1e-5, "clip": "1", "noise": True}, {"epsilon": 1, "delta": 1e-5, "clip": 1, "noise": 1}])
def test_a_volunteer_ignores_a_malformed_privacy_statement(bad):
    session = CoreVolunteer()
    session.receive(encode(Message("status", {"state": "idle", "round": 0, "model_version": 0, "connected": 1, "history": [], "privacy": bad})))
    assert session.snapshot()["privacy"] is None


def test_a_run_without_dp_has_null_epsilon_and_no_clip_in_its_tasks(tmp_path):
    async def main():
        engine, coord, (v,) = make_engine_with(tmp_path, "a")
        engine.start(RunConfig.from_json({"rounds": 1, "clients_per_round": 1, "deadline_s": 30}))
        await until(lambda: v.task() is not None, what="a task")
        assert "clip" not in v.task().fields
        assert (await v.update(small(0))).accepted
        await until(lambda: not engine.running, what="the run to end")
        status = engine.status()
        assert status["history"][0]["epsilon"] is None and status["run"]["privacy"] is None
        assert v.of("status")[-1]["privacy"] is None

    asyncio.run(main())


def test_clipping_only_reports_no_epsilon(tmp_path):
    async def main():
        engine, coord, (v,) = make_engine_with(tmp_path, "a")
        engine.start(dp_run({"noise_multiplier": 0, "clip": 0.1}, rounds=1, clients_per_round=1))
        await until(lambda: v.task() is not None, what="a task")
        before = engine.params.copy()
        assert (await v.update(small(0, scale=1.0))).accepted
        await until(lambda: not engine.running, what="the run to end")
        # No noise: the released mean is the server-clipped update over the cohort of 1.
        np.testing.assert_allclose(engine.params, before + l2_clip(small(0, scale=1.0).astype(np.float64), 0.1)[0], atol=1e-6)
        assert engine.status()["history"][0]["epsilon"] is None and engine.status()["run"]["privacy"]["epsilon"] is None

    asyncio.run(main())


def test_max_epsilon_stops_the_run_before_the_round_that_would_exceed_it(tmp_path):
    z = 2.0
    cap = (rdp_epsilon(z, 2) + rdp_epsilon(z, 3)) / 2  # two rounds fit, a third would not

    async def main():
        engine, coord, (v,) = make_engine_with(tmp_path, "a")
        engine.start(dp_run({"noise_multiplier": z, "clip": 1.0, "max_epsilon": cap}, rounds=10, clients_per_round=1))
        for r in range(2):
            await until(lambda: v.task() and v.task()["round"] == r + 1, what=f"task {r + 1}")
            assert (await v.update(small(r))).accepted
            v.ready()
        await until(lambda: not engine.running, what="the run to stop")
        assert len(v.of("task")) == 2 and engine.model_version == 2
        privacy = engine.status()["run"]["privacy"]
        assert privacy["epsilon"] == pytest.approx(rdp_epsilon(z, 2)) and privacy["epsilon"] <= cap
        assert "max_epsilon" in privacy["stopped"] and engine.store.runs()[-1]["status"] == "completed"

    asyncio.run(main())


def test_adaptive_clip_moves_between_rounds_and_tasks_carry_its_value(tmp_path):
    async def main():
        engine, coord, vs = make_engine_with(tmp_path, *[f"v{i}" for i in range(2)])
        dp = {"noise_multiplier": 1.0, "clip": "adaptive", "initial_clip": 0.05, "count_noise": 1.0}
        engine.start(dp_run(dp, rounds=2, clients_per_round=2))
        clips = []
        for r in range(2):
            await until(lambda: all(v.task() and v.task()["round"] == r + 1 for v in vs), what=f"round {r + 1}")
            clips.append(vs[0].task()["clip"])
            for i, v in enumerate(vs):
                assert (await v.update(small(i), clipped=True)).accepted
                v.ready()
        await until(lambda: not engine.running, what="the run to end")
        history = engine.status()["history"]
        assert clips[0] == 0.05 and clips[1] == history[0]["privacy"]["next_clip"] == history[1]["privacy"]["clip"]
        assert history[0]["privacy"]["clipped_fraction"] == 1.0
        # The round's budget is z whatever the split: one Gaussian of multiplier 1 per round.
        assert history[1]["epsilon"] == pytest.approx(rdp_epsilon(1.0, 2))

    asyncio.run(main())


def test_fedbuff_charges_each_commit_and_takes_at_most_one_update_per_volunteer_per_buffer(tmp_path):
    z, clip = 1.0, 1.0

    async def main():
        engine, coord = make_engine(tmp_path)
        a, b = Volunteer(engine, coord, "a"), Volunteer(engine, coord, "b")
        a.ready()
        engine.start(RunConfig.from_json({
            "mode": "fedbuff", "rounds": 2, "clients_per_round": 2, "buffer_size": 2, "deadline_s": 30, "max_wait_s": 0,
            "dp": {"noise_multiplier": z, "clip": clip},
        }))
        await until(lambda: a.task() is not None, what="a's task")
        assert a.task()["clip"] == clip
        assert (await a.update(small(0))).accepted
        a.ready()
        await asyncio.sleep(0.1)
        # a's update waits in the buffer: a gets no second task for the same commit.
        assert len(a.of("task")) == 1 and engine.model_version == 0
        b.ready()
        await until(lambda: b.task() is not None, what="b's task")
        assert (await b.update(small(1))).accepted
        await until(lambda: engine.model_version == 1, what="the first commit")
        assert engine.history[0].participants == 2
        await until(lambda: len(a.of("task")) == 2, what="a's next task")
        await engine.stop()
        (entry,) = engine.status()["history"]
        assert entry["epsilon"] == pytest.approx(rdp_epsilon(z, 1))

    asyncio.run(main())


def test_poisson_draws_each_volunteer_independently_with_probability_q():
    ids = [f"v{i:04d}" for i in range(1000)]
    q, draws = 0.2, 40
    counts = dict.fromkeys(ids, 0)
    sizes = []
    for _ in range(draws):
        picked = poisson(ids, q)
        sizes.append(len(picked))
        for p in picked:
            counts[p] += 1
    total = sum(sizes)
    sigma = np.sqrt(len(ids) * draws * q * (1 - q))
    assert abs(total - len(ids) * draws * q) < 5 * sigma
    assert len(set(sizes)) > 1  # the cohort's size is random, not fixed
    # Every volunteer's own frequency is Binomial(draws, q): none always or never in.
    per = np.array(list(counts.values()))
    assert per.min() < draws * q < per.max() and abs(per.var() - draws * q * (1 - q)) < 0.25 * draws * q * (1 - q)


def test_a_poisson_run_selects_a_random_subset_of_the_ready_pool(tmp_path):
    async def main():
        engine, coord, vs = make_engine_with(tmp_path, *[f"v{i:02d}" for i in range(40)])
        dp = {"noise_multiplier": 1.0, "clip": 1.0, "sampling": "poisson", "population": 40, "delta": 1e-3}
        engine.start(dp_run(dp, rounds=1, clients_per_round=10, select_timeout_s=0.05))
        await until(lambda: engine.status()["open_round"] is not None, what="a round")
        drawn = [v for v in vs if v.task() is not None]
        # q = 10/40: between 1 and 25 of 40 drawn with probability 1 - 1e-5 or so.
        assert 0 < len(drawn) < 25
        await engine.stop()
        assert engine.status()["run"]["privacy"]["sampling"] == "poisson"

    asyncio.run(main())


def test_the_task_total_composes_every_run_also_after_a_restart(tmp_path):
    z = 1.0

    async def one_run(engine, v, rounds):
        engine.start(dp_run({"noise_multiplier": z, "clip": 1.0}, rounds=rounds, clients_per_round=1))
        for _ in range(rounds):
            seen = len(v.of("task"))
            v.ready()
            await until(lambda: len(v.of("task")) == seen + 1, what="a task")
            assert (await v.update(small(seen))).accepted
        await until(lambda: not engine.running, what="the run to end")
        return engine.status()["run"]["privacy"]

    async def main():
        engine, coord = make_engine(tmp_path)
        v = Volunteer(engine, coord, "a")
        first = await one_run(engine, v, 2)
        assert first["epsilon"] == first["task_epsilon"] == pytest.approx(rdp_epsilon(z, 2))
        second = await one_run(engine, v, 1)
        assert second["epsilon"] == pytest.approx(rdp_epsilon(z, 1)) and second["task_epsilon"] == pytest.approx(rdp_epsilon(z, 3))
        engine.store.store.close()
        # A restarted server reads the earlier runs' accountants from the store.
        again, coord2 = make_engine(tmp_path)
        third = await one_run(again, Volunteer(again, coord2, "a"), 1)
        assert third["epsilon"] == pytest.approx(rdp_epsilon(z, 1)) and third["task_epsilon"] == pytest.approx(rdp_epsilon(z, 4))

    asyncio.run(main())


def test_a_dp_run_whose_accountant_was_not_checkpointed_is_not_resumed(tmp_path):
    """Resuming with a fresh accountant would under-count the rounds already released."""
    async def main():
        engine, _ = make_engine(tmp_path)
        config = dp_run({"noise_multiplier": 1.0, "clip": 1.0}, rounds=3, clients_per_round=1)
        run_id = engine.store.start_run(config.to_dict())
        record = RoundRecord(1, run_id, 1, 0.5, 1.0, 1, 10, 10, 1.0, time.time())
        engine.store.commit_round(record, engine.params, {})  # no "privacy" component
        engine.store.store.close()
        again, _ = make_engine(tmp_path)
        assert again.resume() is None and again.store.runs()[-1]["status"] == "interrupted"

    asyncio.run(main())
