"""The volunteer registry: its state machine, its index by state and the cohort drawn
from it; and the round engine's state machine.

A round lists the ready volunteers and counts states several times; the index makes that
cost the size of the state asked for, not of every connection (docs/scale.md, run 5).
"""

from __future__ import annotations

import asyncio
import random

import pytest

from rounds_harness import RecordingCoordinator

from webfl.server.engine import RunConfig
from webfl.server.rounds.peers import MOVES, PeerState, Peers
from webfl.server.rounds.selection import Selection
from webfl.server.rounds.seeds import selection_rng
from webfl.server.rounds.state import Phase, RoundState


def test_the_index_by_state_agrees_with_a_scan_of_every_volunteer_through_joins_moves_and_leaves():
    peers, rng = Peers(Phase()), random.Random(7)
    for step in range(3000):
        op = rng.random()
        if op < 0.3 or len(peers) == 0:
            peer_id = f"{rng.randrange(400):03x}"
            if peer_id not in peers:
                peers.add(peer_id, "agent", "127.0.0.1", rng.choice([["q8"], ["q8", "topk"], []]))
        elif op < 0.45:
            peers.remove(rng.choice([p.id for p in peers]))
        elif op < 0.55:
            peers.wait(rng.choice([p.id for p in peers]), until=rng.random())
        else:
            peer = peers.get(rng.choice([p.id for p in peers]))
            peers.to(peer, rng.choice(sorted(MOVES[peer.state])))
        if step % 10 == 0:
            peers.wake(now=rng.random())
        everyone = list(peers)
        for state in PeerState:
            scanned = sorted(p.id for p in everyone if p.state is state)
            assert peers.in_state(state) == scanned and peers.count(state) == len(scanned)
            assert [p.id for p in peers.of_state(state)] == scanned
        assert peers.codec_sets() == {p.codecs for p in everyone}


def test_waking_moves_exactly_the_volunteers_whose_wait_is_over():
    peers = Peers(Phase())
    for i, until in enumerate([1.0, 2.0, 3.0]):
        peers.to(peers.add(f"v{i}", "agent", "127.0.0.1", ["q8"]), PeerState.READY)
        peers.wait(f"v{i}", until)
    peers.wake(now=2.0)
    assert peers.in_state(PeerState.READY) == ["v0", "v1"] and peers.in_state(PeerState.WAITING) == ["v2"]


def test_a_cohort_is_the_same_draw_from_the_ready_ids_as_before_the_index():
    # Runs stay reproducible: same seed and ready set, the cohort NumPy draws from the ids.
    async def main():
        phase = Phase()
        peers = Peers(phase)
        config = RunConfig.from_json(dict(rounds=1, clients_per_round=10, max_wait_s=0, select_timeout_s=0))
        stages = list(config.codec.stages)
        for i in range(0, 3_000, 7):
            peers.add(f"{i:012x}", "agent", "127.0.0.1", stages)
            peers.to(peers.get(f"{i:012x}"), PeerState.READY)
            if not i % 3:
                peers.to(peers.get(f"{i:012x}"), PeerState.TRAINING)
        peers.add("no-codec", "agent", "127.0.0.1", [])  # ready, but never eligible
        peers.to(peers.get("no-codec"), PeerState.READY)
        selection = Selection(peers, phase, RecordingCoordinator(), 42, lambda: [])
        ready = sorted(p.id for p in peers if p.state is PeerState.READY and p.id != "no-codec")
        for version in range(5):
            cohort = await selection.select(config, version, version)
            drawn = selection_rng(42, version, version).choice(ready, size=10, replace=False).tolist()
            assert cohort.selected == sorted(drawn) and cohort.ready == len(ready) + 1
        # Without it every volunteer connected can decode the codec: the ready ids as they are.
        peers.remove("no-codec")
        assert selection.eligible(config.codec) == ready
        cohort = await selection.select(config, 9, 9)
        assert cohort.selected == sorted(selection_rng(42, 9, 9).choice(ready, size=10, replace=False).tolist())

    asyncio.run(main())


def test_a_volunteer_moves_only_as_its_state_machine_says_and_a_wait_goes_only_to_one_ready():
    peers = Peers(Phase())
    v = peers.add("v", "agent", "127.0.0.1", ["q8"])
    with pytest.raises(RuntimeError, match="no move from connected to training"):
        peers.to(v, PeerState.TRAINING)  # a task only for one that said it is ready
    peers.wait("v", until=5.0)  # not ready: the wait that went out changes nothing here
    assert v.state is PeerState.CONNECTED and peers.in_state(PeerState.CONNECTED) == ["v"]
    peers.to(v, PeerState.READY)
    peers.to(v, PeerState.TRAINING)
    peers.wait("v", until=5.0)  # training: the round still waits for its update
    assert v.state is PeerState.TRAINING and peers.in_state(PeerState.WAITING) == []
    peers.to(v, PeerState.PAUSED)
    with pytest.raises(RuntimeError, match="no move from paused to waiting"):
        peers.to(v, PeerState.WAITING)
    assert peers.in_state(PeerState.PAUSED) == ["v"]  # the refused move left the index as it was


def test_a_volunteer_that_left_is_never_filed_again():
    # A round awaits each frame it sends: the volunteer may leave before its move is made.
    peers = Peers(Phase())
    gone = peers.add("v0", "agent", "127.0.0.1", ["q8"])
    peers.add("v1", "agent", "127.0.0.1", ["q8"])
    peers.remove("v0")
    peers.to(gone, PeerState.TRAINING)
    peers.wait("v0", until=1.0)
    back = peers.add("v0", "agent", "127.0.0.1", ["q8"])  # reconnected under the same id
    peers.to(gone, PeerState.PAUSED)  # the old connection's move is not the new one's
    assert back.state is PeerState.CONNECTED and peers.in_state(PeerState.CONNECTED) == ["v0", "v1"]
    assert all(peers.count(s) == 0 for s in PeerState if s is not PeerState.CONNECTED)


def test_the_round_engine_moves_only_as_its_diagram_says():
    phase = Phase()
    with pytest.raises(RuntimeError, match="no move from idle to aggregating"):
        phase.to(RoundState.AGGREGATING)  # nothing to aggregate before a round trained
    for state in (RoundState.SELECTING, RoundState.TRAINING, RoundState.AGGREGATING, RoundState.BROADCASTING, RoundState.IDLE):
        phase.to(state)
    phase.to(RoundState.TRAINING)  # FedBuff: no selection
    with pytest.raises(RuntimeError, match="no move from training to broadcasting"):
        phase.to(RoundState.BROADCASTING)  # a commit aggregates first
    assert phase.state is RoundState.TRAINING
