"""Cluster throughput and failover (issue 13): accepted updates per second with 1, 2 and 4
members on one Redis, in one run, and the seconds without a commit when the leader dies.

    .venv/bin/python bench/cluster.py                      # 120 volunteers, 3 rounds a step: a few minutes
    .venv/bin/python bench/cluster.py --volunteers 400 --members 1,2,4
    .venv/bin/python bench/cluster.py --aggregator median --failover-rounds 0   # a buffered rule, no failover

Throughput: for each member count, a fresh redis-server, that many real ``webfl serve``
members on one data folder, and one ``bench/load_swarm.py`` generator process per member
holding an equal share of the volunteers on it directly (the load balancer's job). Every
volunteer answers each task at once with a precomputed q8 update of the 2NN; each round
selects them all (``clients_per_round`` = volunteers). The rate is the run's accepted
updates over the sum of its rounds' durations (the server's own ``duration_s``).
``--aggregator``: the run's rule; ``fedavg`` is folded in shares on the followers, a
buffered rule (``median``) is vetted there and folded by the leader.

Failover: two members behind nginx, ``webfl simulate`` (volunteers that train and
reconnect) through it, the leader killed with SIGKILL after a few commits, the default
10 s lease. The cost is the gap between the last commit before the kill and the first
after, beside the run's usual gap between commits. Not part of the tests.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from load import RUN, SERVER_ENV, Generators, load_average  # noqa: E402
from servers import TOKEN, ServerProcess, start_server  # noqa: E402
from services import Nginx, Redis  # noqa: E402


def members(data: Path, redis: Redis, n: int, lease_s: float = 10.0, env: dict | None = None) -> list[ServerProcess]:
    started = []
    for i in range(n):
        started.append(start_server(data, "--redis", redis.url, "--member-id", f"m{i}", "--lease-s", f"{lease_s:g}",
                                    "--log-level", "warning", env={**SERVER_ENV, **(env or {})}))
        if i == 0:  # the first started leads: wait for it, so the rest follow
            started[0].wait_for(lambda s: s["cluster"]["role"] == "leader", timeout=30, what="a leader")
    return started


def throughput(n: int, volunteers: int, rounds: int, aggregator: str) -> dict:
    redis = Redis.start()
    gens: list[Generators] = []
    with tempfile.TemporaryDirectory() as tmp:
        cluster = members(Path(tmp) / "data", redis, n)
        try:
            leader = cluster[0]
            gens = [Generators(m.ws_url, 1) for m in cluster]
            shares = [volunteers // n + (i < volunteers % n) for i in range(n)]
            joined = sum(g.grow(s, 300)["joined"] for g, s in zip(gens, shares))
            leader.wait_for(lambda s: s["volunteers"]["ready"] == volunteers, timeout=120, what="every volunteer ready")
            config = {**RUN, "rounds": rounds, "clients_per_round": volunteers, "min_updates": volunteers, "deadline_s": 300,
                      "aggregator": aggregator}
            code, body = leader.api("POST", "/api/rounds", config)
            assert code == 202, body
            status = leader.wait_for(lambda s: s["run"] and not s["run"]["running"], timeout=900, what="the run to end")
            mine = [h for h in status["history"] if h["run_id"] == body["run"]]
            assert len(mine) == rounds, mine
            accepted = sum(h["participants"] for h in mine)
            busy = sum(h["duration_s"] for h in mine)
            return {"members": n, "joined": joined, "accepted": accepted, "round_s": busy / rounds, "rate": accepted / busy}
        finally:
            for g in gens:
                g.stop()
            for m in cluster:
                m.stop()
            redis.stop()


def failover(rounds: int) -> dict:
    redis = Redis.start()
    with tempfile.TemporaryDirectory() as tmp:
        cluster = members(Path(tmp) / "data", redis, 2)
        proxy = Nginx.start([m.url.removeprefix("http://") for m in cluster])
        cmd = [sys.executable, "-m", "webfl.cli", "simulate", "--server", proxy.url, "--clients", "4", "--rounds", str(rounds),
               "--local-epochs", "1", "--timeout-s", "600"]
        sim = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "WEBFL_ADMIN_TOKEN": TOKEN})
        try:
            leader, follower = cluster
            leader.wait_for(lambda s: s["run"] and s["run"]["rounds_done"] >= 4, timeout=300, what="four commits")
            os.kill(leader.proc.pid, signal.SIGKILL)
            killed_at = time.time()
            leader.proc.wait()
            out, err = sim.communicate(timeout=600)
            assert sim.returncode == 0, out + err
            history = follower.status()["history"]
        finally:
            if sim.poll() is None:
                sim.kill()
            for m in cluster:
                m.stop(kill=True)
            proxy.stop()
            redis.stop()
    times = [h["committed_at"] for h in history]
    assert [h["round"] for h in history] == list(range(1, rounds + 1)), history
    before = [t for t in times if t < killed_at]
    after = [t for t in times if t > killed_at]
    usual = statistics.median(b - a for a, b in zip(times, times[1:]) if not (a < killed_at < b))
    return {"gap_s": after[0] - before[-1], "kill_to_commit_s": after[0] - killed_at, "usual_gap_s": usual}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--volunteers", type=int, default=120)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--members", default="1,2,4")
    parser.add_argument("--aggregator", default="fedavg")
    parser.add_argument("--failover-rounds", type=int, default=10, help="0: no failover")
    args = parser.parse_args()
    print(f"load average at the start: {load_average()}; aggregator {args.aggregator}", flush=True)
    rows = []
    for n in (int(x) for x in args.members.split(",")):
        rows.append(throughput(n, args.volunteers, args.rounds, args.aggregator))
        print(rows[-1], flush=True)
    fo = failover(args.failover_rounds) if args.failover_rounds else None
    print(fo, flush=True)
    base = rows[0]["rate"]
    print(f"\nload average at the end: {load_average()}\n")
    print("| members | volunteers joined | accepted | round time | accepted updates/s | vs 1 member | efficiency per member |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        ratio = r["rate"] / base
        print(f"| {r['members']} | {r['joined']} | {r['accepted']} | {r['round_s']:.2f} s | {r['rate']:.0f} | {ratio:.2f}x | {ratio / r['members']:.2f} |")
    if fo is None:
        return 0
    print(f"\nFailover (2 members, lease 10 s, kill -9 of the leader): {fo['gap_s']:.1f} s without a commit "
          f"({fo['kill_to_commit_s']:.1f} s from the kill to the next commit), against a usual {fo['usual_gap_s']:.2f} s between commits "
          f"({fo['gap_s'] / fo['usual_gap_s']:.0f}x).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
