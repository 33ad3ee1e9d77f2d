"""A compressed run in real Chromium: top-k + q8 up, q8 deltas down, the residual kept in IndexedDB."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from browser_helpers import admin_login, join, read_record, wait_state

pytestmark = pytest.mark.browser


def test_a_tab_trains_with_topk_and_q8_and_keeps_its_residual_across_a_reload(context, serve):
    server = serve()
    tab = context.new_page()
    logs: list[str] = []
    tab.on("console", lambda msg: logs.append(msg.text))
    join(tab, server.url)

    admin = context.new_page()
    admin_login(admin, server)
    admin.get_by_test_id("connected").filter(has_text="1").wait_for()
    for name, value in dict(rounds=2, clients_per_round=1, min_updates=1, local_epochs=1, deadline_s=60, select_timeout_s=5).items():
        admin.get_by_test_id(f"cfg-{name}").fill(str(value))
    admin.get_by_test_id("cfg-codec").fill("topk:0.01+q8")
    admin.get_by_test_id("cfg-downlink").fill("delta:q8")
    admin.get_by_test_id("launch").click()
    expect(admin.get_by_test_id("history-row")).to_have_count(2, timeout=120_000)

    status = server.status()
    assert status["run"]["config"]["codec"] == "topk:0.01+q8" and status["run"]["config"]["downlink"] == "delta:q8"
    history = status["history"]
    assert [h["participants"] for h in history] == [1, 1]
    assert history[-1]["accuracy"] > history[0]["accuracy"] > 0.3, history
    assert all(h["bytes_up"] < 0.01 * 199210 * 4 for h in history), history  # vs a float32 update
    expect(tab.get_by_test_id("rounds-done")).to_have_text("2")  # the delta broadcasts decoded, digests checked
    record = read_record(tab, "residuals")
    assert (record["spec"], record["bytes"]) == ("topk:0.01+q8", 199210 * 4)

    tab.reload()
    join(tab, server.url)
    wait_state(tab, "idle")
    assert any("restored the topk:0.01+q8 error-feedback residual" in line for line in logs), logs
