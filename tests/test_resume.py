"""Resuming a volunteer id after a reload: the handshake over a real socket, and the browser session's pending update."""

import numpy as np
from test_server import MODEL_SIZE, Client
from test_volunteer import DATA, TASK, model_frame, server, task_frame

from webfl import __version__
from webfl.core.browser import BrowserSession
from webfl.core.protocol import decode

# -- the handshake ------------------------------------------------------------------


def hello(client, resume=None):
    fields = {"resume": resume} if resume is not None else {}
    client.send("hello", version=__version__, codecs=["none"], agent="test", **fields)
    return client.recv("welcome")


def credential(welcome):
    return {"volunteer": welcome["volunteer"], "token": welcome["resume"]}


def test_the_welcome_credential_resumes_the_id_once_the_old_connection_is_gone(server):
    first = Client(server)
    old = hello(first)
    first.ws.close()
    server.wait_for(lambda s: s["connected"] == 0, what="the old connection to go")
    again = hello(Client(server), credential(old))
    assert again["volunteer"] == old["volunteer"] and again["resume"] == old["resume"]


def test_a_forged_credential_gets_a_new_id(server):
    first = Client(server)
    old = hello(first)
    first.ws.close()
    server.wait_for(lambda s: s["connected"] == 0, what="the old connection to go")
    forged = hello(Client(server), {"volunteer": old["volunteer"], "token": "0" * 32})
    assert forged["volunteer"] != old["volunteer"]


def test_an_id_still_connected_is_not_shared(server):
    first = Client(server)
    old = hello(first)
    second = hello(Client(server), credential(old))
    assert second["volunteer"] != old["volunteer"]
    assert server.status()["connected"] == 2


def test_a_resumed_volunteer_delivers_its_update_while_the_round_is_open_and_only_once(server):
    a, b = Client(server), Client(server)
    welcome_a, _ = a.join()
    b.join()
    server.api("POST", "/api/rounds", {"rounds": 1, "clients_per_round": 2, "min_updates": 1, "deadline_s": 60, "select_timeout_s": 10})
    task = a.recv("task")
    b.recv("task")  # b stays selected and silent: the round stays open
    a.ws.close()  # a "reloads" with its update computed but not sent
    server.wait_for(lambda s: s["connected"] == 1, what="a to go")
    a2 = Client(server)
    assert hello(a2, credential(welcome_a))["volunteer"] == welcome_a["volunteer"]
    delta = np.full(MODEL_SIZE, 0.01, np.float32)
    assert a2.update(task, delta).type == "accept"
    assert "duplicate" in a2.update(task, delta)["reason"]
    assert server.status()["open_round"]["received"] == 1
    b.ws.close()  # the round has nobody left to wait for
    status = server.wait_for(lambda s: len(s["history"]) == 1, what="the round to commit")
    assert status["history"][0]["participants"] == 1
    assert "not open" in a2.update(task, delta)["reason"]


# -- the browser session's pending update -----------------------------------------------


def welcome(volunteer="v1", resume="r1"):
    return server("welcome", version=__version__, volunteer=volunteer, task=TASK.to_dict(), shard=None, resume=resume)


def trained() -> tuple[BrowserSession, bytes]:
    s = BrowserSession("test")
    s.hello()
    s.receive(welcome())
    s.use_shard(_npz())
    s.receive(model_frame(0))
    s.receive(task_frame())
    return s, s.train()


def _npz() -> bytes:
    import io

    buf = io.BytesIO()
    np.savez(buf, x=DATA.x, y=DATA.y)
    return buf.getvalue()


def test_an_update_is_pending_until_its_verdict():
    s, update = trained()
    assert decode(s.pending_frame()).type == "update" and s.pending_frame() == update
    assert s.pending_record() == '{"volunteer": "v1", "resume": "r1", "round": 1}'
    s.receive(server("accept", round=1))
    assert s.pending_record() == "" and s.rounds_accepted == [1]


def test_after_a_reload_the_pending_update_is_resent_when_the_id_is_resumed():
    _, update = trained()
    s = BrowserSession("test")
    assert s.restore_pending("v1", "r1", 1, update)
    assert decode(s.hello())["resume"] == {"volunteer": "v1", "token": "r1"}
    assert s.receive(welcome()) == [update]
    s.receive(server("reject", reason="round 1 is not open for updates", round=1))
    assert s.pending_record() == ""


def test_a_new_id_drops_the_pending_update():
    _, update = trained()
    s = BrowserSession("test")
    s.restore_pending("v1", "r1", 1, update)
    s.hello()
    assert s.receive(welcome("v2", "r2")) == []
    assert s.pending_record() == "" and not s.restore_pending("v1", "r1", 1, update)
