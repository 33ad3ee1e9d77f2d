"""SecAgg rounds through the real engine and real core volunteers, in process (tests/secagg_net.py):
the committed step is exactly the decoded mean of the survivors' quantized levels; dropouts
at each stage up to the threshold still commit; too many abandon the round, model unchanged."""

import asyncio
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from webfl.server.secagg import SecAggSettings

from secagg_net import Net

BODY = {"rounds": 1, "clients_per_round": 8, "min_updates": 3, "deadline_s": 10, "select_timeout_s": 0.2,
        "secagg": {"clip": 1.0, "neighbors": 6, "threshold": 4, "stage_s": 0.5}}


def expected_step(net: Net, survivors: list[str], size: int) -> np.ndarray:
    """The mean the server must commit: the survivors' levels summed exactly, decoded, divided."""
    params = SecAggSettings(**{k: v for k, v in BODY["secagg"].items() if k != "stage_s"}).for_round(8, size, 1.0, dp=False)
    total = np.sum([net.levels[v] for v in survivors], axis=0, dtype=np.uint64).astype(np.uint32)
    return (params.quantizer.decode_sum(total, len(survivors)) / len(survivors)).astype(np.float32)


@pytest.mark.parametrize("deferred", [False, True], ids=["native", "deferred-crypto"])
@pytest.mark.parametrize(("vanish", "survivors"), [
    ({}, 8),
    ({"v1": "train", "v5": "train"}, 6),  # shared their secrets, never uploaded: their pair masks are rebuilt
    ({"v2": "sa_masked", "v6": "sa_masked"}, 8),  # uploaded, then gone before unmasking: their self masks are rebuilt
    ({"v0": "sa_keys", "v4": "sa_shares"}, 6),  # gone after advertising, and after sharing
])
def test_the_committed_step_is_the_exact_mean_of_the_survivors_levels(tmp_path, monkeypatch, vanish, survivors, deferred):
    """``deferred``: the volunteers' cryptography is answered between frames, as the browser's worker does."""
    net = Net(tmp_path, 8, deferred=deferred)
    net.vanish = dict(vanish)
    before = net.engine.params.copy()
    asyncio.run(net.run(BODY, monkeypatch=monkeypatch))
    assert not net.abandoned() and not net.closed
    (record,) = net.engine.history
    assert record.participants == survivors
    uploaded = sorted(v for v in net.levels if net.vanish.get(v) != "train")
    assert len(uploaded) == survivors
    step = net.engine.params - before
    np.testing.assert_allclose(step, expected_step(net, uploaded, before.size), rtol=0, atol=1e-6)
    assert np.abs(step).max() > 1e-4  # the update moved the model: not a trivially equal zero step


def test_thirty_percent_dropout_after_masking_commits_with_the_default_degree(tmp_path, monkeypatch):
    net = Net(tmp_path, 10)
    net.vanish = {f"v{i}": "sa_masked" for i in (0, 4, 7)}
    before = net.engine.params.copy()
    body = {**BODY, "clients_per_round": 10, "secagg": {"clip": 1.0, "stage_s": 0.5}}
    asyncio.run(net.run(body, monkeypatch=monkeypatch))
    assert not net.abandoned()
    assert net.engine.history[0].participants == 10
    assert not np.array_equal(net.engine.params, before)


def test_too_many_silent_during_unmasking_abandons_with_the_model_unchanged(tmp_path, monkeypatch):
    net = Net(tmp_path, 8)
    # 5 of 8 gone after uploading: someone keeps fewer than t = 4 of its 6 neighbours.
    net.vanish = {f"v{i}": "sa_masked" for i in range(5)}
    before = net.engine.params.copy()
    asyncio.run(net.run(BODY, monkeypatch=monkeypatch))
    (abandoned,) = net.abandoned()[:1]
    assert abandoned.why == "unmask_failed" and not net.engine.history
    np.testing.assert_array_equal(net.engine.params, before)


def test_a_dp_run_divides_the_unmasked_sum_by_the_expected_cohort_and_charges_the_accountant(tmp_path, monkeypatch):
    """Noise multiplier 0 makes the release exact; a volunteer gone before uploading still
    leaves the divisor at the expected cohort (the count would leak who took part)."""
    net = Net(tmp_path, 8)
    net.vanish = {"v2": "train"}
    before = net.engine.params.copy()
    body = {**BODY, "dp": {"noise_multiplier": 0.0, "clip": 0.5}, "secagg": {"neighbors": 6, "threshold": 4, "stage_s": 0.5}}
    asyncio.run(net.run(body, monkeypatch=monkeypatch))
    (record,) = net.engine.history
    assert record.participants == 7 and record.privacy["updates"] == 7
    # Secure aggregation hides each update's clipped bit: the fraction is unknown (null), not 0.
    assert record.privacy["clipped_fraction"] is None
    assert record.to_dict()["privacy"]["clipped_fraction"] is None  # the status's history entry
    params = SecAggSettings(neighbors=6, threshold=4).for_round(8, before.size, 0.5, dp=True)
    uploaded = sorted(net.uploaded)
    total = np.sum([net.levels[v] for v in uploaded], axis=0, dtype=np.uint64).astype(np.uint32)
    expected = (params.quantizer.decode_sum(total, 7) / 8).astype(np.float32)
    np.testing.assert_allclose(net.engine.params - before, expected, rtol=0, atol=1e-6)
    # Each quantized update stays within dp.clip: the sensitivity the noise assumes.
    for v in uploaded:
        decoded = params.quantizer.decode_sum(net.levels[v], 1)
        assert np.linalg.norm(decoded) <= 0.5 + 1e-9


def test_the_status_shows_each_stage_with_its_survivors_and_deadline_and_the_admin_page_words_it(tmp_path, monkeypatch):
    """``open_round.secagg`` as a volunteer drops out before uploading; then admin/secagg.js
    (run by node, no browser) turns those very statuses into the open-round panel's text."""
    net = Net(tmp_path, 8)
    net.vanish = {"v1": "train"}
    seen: list[dict] = []

    def observe() -> None:
        open_ = net.engine.status()["open_round"]
        if open_ is not None and open_["secagg"] is not None and (not seen or open_["secagg"]["stage"] != seen[-1]["stage"]):
            seen.append(open_["secagg"])

    asyncio.run(net.run(BODY, monkeypatch=monkeypatch, observe=observe))
    assert [s["stage"] for s in seen] == ["advertise", "share", "upload", "unmask"]
    assert [s["survivors"] for s in seen] == [8, 8, 8, 7] and {s["cohort"] for s in seen} == {8}
    upload = seen[2]
    assert 0 < upload["stage_deadline_in_s"] <= BODY["deadline_s"]
    assert all(0 <= s["stage_deadline_in_s"] <= BODY["secagg"]["stage_s"] for s in (seen[1], seen[3]))
    module = (Path(__file__).parents[1] / "web/static/admin/secagg.js").as_uri()
    script = f"import {{ describe }} from {json.dumps(module)};" \
             "for await (const line of (await import('node:readline')).createInterface({input: process.stdin})) console.log(describe(JSON.parse(line)));"
    out = subprocess.run(["node", "--input-type=module", "-e", script], input="\n".join(map(json.dumps, [*seen, None])),
                         capture_output=True, text=True, check=True, timeout=30).stdout.splitlines()
    assert out[3].startswith("stage unmask (survivors reveal the shares that unmask the sum): 7 of 8 volunteers still in, stage ends in ")
    assert out[2].startswith("stage upload (volunteers train and upload masked updates): 8 of 8 volunteers still in")
    assert out[4] == ""  # no secure aggregation: the page hides the row
