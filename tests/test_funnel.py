"""The cohort funnel in process: every step's count in a sync round with a rejection, a
drop-out and a straggler; the max_examples cap in the mean; the waiting hint; abandoned
rounds recorded with their funnel; FedBuff's funnel per buffer; the engine's counters in
/metrics."""

import asyncio
import sqlite3

import numpy as np
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from rounds_harness import TASK, Volunteer, make_engine, make_engine_with, small, until

from webfl.server.engine import RunConfig
from webfl.server.rounds.funnel import Funnel
from webfl.server.store import Store
from webfl.server.web.metrics import registry_for


def run(coro):
    return asyncio.run(coro)


def samples(engine) -> dict[tuple, float]:
    """/metrics as the collector gives it, by (name, labels)."""
    text = generate_latest(registry_for(engine)).decode()
    found = [s for family in text_string_to_metric_families(text) for s in family.samples]
    assert all(s.labels["task"] == engine.task.name for s in found)
    return {(s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != "task"))): s.value for s in found}


def nan_update() -> np.ndarray:
    bad = small(5)
    bad[3] = np.nan
    return bad


def test_a_sync_round_s_funnel_counts_every_step_and_the_cap_bounds_one_update_s_weight(tmp_path):
    async def main():
        engine, coord = make_engine(tmp_path)
        vs = {p: Volunteer(engine, coord, p) for p in "abcde"}
        Volunteer(engine, coord, "idle")  # connected, never ready
        for v in vs.values():
            v.ready()
        before = engine.params.copy()
        # ceil(3 * 1.3) = 4 of the 5 ready are selected; the round closes at its deadline.
        engine.start(RunConfig.from_json(dict(rounds=1, clients_per_round=3, over_selection=1.3, deadline_s=1.0, max_examples=1000)))
        await until(lambda: sum(v.task() is not None for v in vs.values()) == 4, what="4 tasks")
        chosen = sorted(p for p, v in vs.items() if v.task() is not None)
        (outsider,) = set(vs) - set(chosen)
        a, b, c, d = (vs[p] for p in chosen)
        live = engine.status()["open_round"]["funnel"]
        assert (live["connected"], live["ready"], live["selected"], live["trained"], live["accepted"]) == (6, 5, 4, 4, 0)

        assert (await a.update(small(0), n=50)).accepted
        assert (await b.update(nan_update(), n=5000)).kind == "nan"
        assert (await b.update(small(1), n=5000)).accepted  # its task stayed open; capped at 1000
        c.leave()  # a drop-out
        outsider_verdict = await vs[outsider].update(small(2), task=a.task())
        assert outsider_verdict.kind == "not_selected"
        live = engine.status()["open_round"]["funnel"]
        assert live["reported"] == 2 and live["accepted"] == 2 and live["rejected"] == {"nan": 1, "not_selected": 1}
        await until(lambda: not engine.running, timeout=10, what="the round to close at its deadline")  # d never answers

        (record,) = engine.history
        funnel = record.funnel
        assert funnel == {
            "connected": 6, "ready": 5, "selected": 4, "trained": 4, "reported": 2, "accepted": 2,
            "rejected": {"nan": 1, "not_selected": 1}, "dropouts": 1, "stragglers": 1,
            "capped": 1, "max_examples": 1000,
            "examples": {"min": 50, "median": 2525.0, "max": 5000, "top_share": pytest.approx(1000 / 1050)},
        }
        # The weight in the mean is min(num_examples, max_examples): 50 and 1000, not 50 and 5000.
        np.testing.assert_allclose(engine.params, before + (50 * small(0) + 1000 * small(1)) / 1050, atol=1e-6)
        assert engine.store.history()[0].funnel == funnel  # stored with the round, in its transaction
        assert engine.status()["history"][0]["funnel"] == funnel
        assert engine.status()["engine"]["commit_seconds"]["count"] == 1
        metrics = samples(engine)
        assert metrics[("webfl_updates_capped_total", ())] == 1
        assert metrics[("webfl_commit_duration_seconds_count", ())] == 1
        assert metrics[("webfl_commit_duration_seconds_bucket", (("le", "+Inf"),))] == 1

    run(main())


def test_the_hint_says_how_many_are_ready_of_how_many_needed_and_who_cannot_decode_the_codec(tmp_path):
    async def main():
        engine, coord = make_engine(tmp_path)
        a = Volunteer(engine, coord, "a", codecs=("none", "fp16"))
        a.ready()
        Volunteer(engine, coord, "old", codecs=("none",)).ready()  # cannot decode fp16
        assert engine.status()["hint"] is None  # no run: nothing is waited for
        engine.start(RunConfig.from_json(dict(rounds=1, clients_per_round=3, min_updates=2, select_timeout_s=30, codec="fp16")))
        await until(lambda: engine.status()["hint"] is not None, what="a hint")
        status = engine.status()
        assert status["state"] == "selecting" and status["open_round"] is None
        assert status["hint"] == "1 of 2 needed are ready (a round takes up to 3); 1 more ready cannot decode the run's codec"
        assert status["waiting_for"] == {"ready": 1, "wanted": 3, "needed": 2, "other_codec": 1, "starts_in_s": None}
        Volunteer(engine, coord, "b", codecs=("none", "fp16")).ready()
        await until(lambda: engine.status()["waiting_for"]["ready"] == 2, what="b counted")
        status = engine.status()
        assert status["hint"].startswith("2 of 3 wanted are ready; starting with 2 in ")
        assert 0 < status["waiting_for"]["starts_in_s"] <= 30
        Volunteer(engine, coord, "c", codecs=("none", "fp16")).ready()
        await until(lambda: engine.status()["open_round"] is not None, what="the round to start at 3")
        assert engine.status()["hint"] is None and engine.status()["waiting_for"] is None
        await engine.stop()

    run(main())


def test_abandoned_rounds_are_recorded_with_why_and_their_funnel_and_counted_in_metrics(tmp_path, store_target):
    async def main():
        engine, coord, (a, b) = make_engine_with(tmp_path, "a", "b", target=store_target)
        engine.start(RunConfig.from_json(dict(rounds=1, clients_per_round=2, min_updates=2, deadline_s=0.3, max_wait_s=0)))
        await until(lambda: a.task() and b.task(), what="tasks")
        assert (await a.update(small(0))).accepted  # b never answers: 1 of 2 needed
        await until(lambda: engine.store.abandoned_rounds(), what="the round to be abandoned")
        (first,) = engine.store.abandoned_rounds()
        assert (first.round, first.run_id, first.model_version, first.why) == (1, 1, 0, "too_few_updates")
        assert first.funnel["accepted"] == 1 and first.funnel["stragglers"] == 1 and first.funnel["dropouts"] == 0
        # The retry: both answer, one with a step so large that the aggregate is refused.
        a.ready()
        b.ready()
        await until(lambda: len(a.of("task")) == 2 and len(b.of("task")) == 2, what="the retry")
        assert (await a.update(small(0))).accepted
        assert (await b.update(np.full(TASK.build_model().size, 1e7, np.float32))).accepted
        await until(lambda: len(engine.store.abandoned_rounds()) == 2, what="the refused aggregate")
        second = engine.store.abandoned_rounds()[1]
        assert second.why == "refused_aggregate" and second.funnel["accepted"] == 2 and engine.history == []
        await engine.stop()
        return samples(engine)

    metrics = run(main())
    assert metrics[("webfl_rounds_abandoned_total", (("why", "too_few_updates"),))] == 1
    assert metrics[("webfl_rounds_abandoned_total", (("why", "refused_aggregate"),))] == 1
    assert metrics[("webfl_commit_duration_seconds_count", ())] == 0  # a refused aggregate is no commit
    # A new store on the same file (a restart) still has both, in order.
    store = Store(store_target).scoped(TASK.name, TASK.model)
    assert [r.why for r in store.abandoned_rounds()] == ["too_few_updates", "refused_aggregate"]
    assert store.abandoned_counts() == {"too_few_updates": 1, "refused_aggregate": 1}


def test_fedbuff_has_a_funnel_per_buffer_and_caps_weights_too(tmp_path):
    async def main():
        engine, coord, vs = make_engine_with(tmp_path, *[f"v{i}" for i in range(3)])
        engine.start(RunConfig.from_json(dict(mode="fedbuff", rounds=1, clients_per_round=3, buffer_size=2, deadline_s=30, max_examples=200)))
        await until(lambda: all(v.task() for v in vs), what="3 tasks")
        before = engine.params.copy()
        assert (await vs[0].update(small(0), n=100)).accepted
        assert (await vs[1].update(small(1), n=100, codec="fp16")).kind == "codec"
        assert engine.status()["fedbuff"]["funnel"]["rejected"] == {"codec": 1}
        assert (await vs[1].update(small(1), n=900)).accepted  # weighs 200
        await until(lambda: not engine.running, what="the commit")
        (record,) = engine.history
        f = record.funnel
        assert (f["selected"], f["trained"], f["reported"], f["accepted"], f["stragglers"], f["capped"]) == (3, 3, 2, 2, 1, 1)
        assert f["rejected"] == {"codec": 1} and f["examples"]["top_share"] == pytest.approx(200 / 300)
        np.testing.assert_allclose(engine.params, before + (100 * small(0) + 200 * small(1)) / 300, atol=1e-6)

    run(main())


def test_max_examples_is_a_run_setting_with_bounds():
    assert RunConfig().max_examples == 1000
    assert RunConfig.from_json({"max_examples": 50}).to_dict()["max_examples"] == 50
    with pytest.raises(ValueError, match="max_examples"):
        RunConfig.from_json({"max_examples": 0})


def test_an_empty_funnel_has_no_example_distribution():
    funnel = Funnel(3, 0, 1000)
    funnel.close([])
    d = funnel.to_dict()
    assert d["examples"] is None and d["accepted"] == d["selected"] == d["dropouts"] == 0 and d["connected"] == 3


def test_a_database_from_before_the_funnel_gains_the_column_and_its_rounds_read_without_one(tmp_path):
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("""CREATE TABLE rounds (round INTEGER PRIMARY KEY, run_id INTEGER, model_version INTEGER NOT NULL,
            accuracy REAL NOT NULL, loss REAL NOT NULL, participants INTEGER NOT NULL, bytes_up INTEGER NOT NULL,
            bytes_down INTEGER NOT NULL, duration_s REAL NOT NULL, committed_at REAL NOT NULL)""")
        db.execute("INSERT INTO rounds VALUES (1, NULL, 1, 0.5, 1.0, 2, 10, 20, 1.0, 1e9)")
    store = Store(path)
    (old,) = store.scoped("mnist", "2nn").history()  # schema 1's rounds were MNIST's
    assert old.round == 1 and old.funnel is None and old.privacy is None
    store.close()
    with sqlite3.connect(path) as db:
        assert {"funnel", "privacy", "task"} <= {row[1] for row in db.execute("PRAGMA table_info(rounds)")}
    Store(path).close()  # migrating twice is a no-op


def test_a_task_that_cannot_be_sent_is_selected_but_not_trained(tmp_path):
    async def main():
        engine, coord, (a, b) = make_engine_with(tmp_path, "a", "b")
        del coord.inbox["b"]  # b's connection takes no frame: its task is never queued
        engine.start(RunConfig.from_json(dict(rounds=1, clients_per_round=2, deadline_s=30)))
        await until(lambda: a.task() is not None, what="a's task")
        assert (await a.update(small(0))).accepted
        await until(lambda: not engine.running, what="the commit")  # nobody else is training
        f = engine.history[0].funnel
        assert (f["selected"], f["trained"], f["reported"], f["accepted"], f["dropouts"], f["stragglers"]) == (2, 1, 1, 1, 0, 0)

    run(main())
