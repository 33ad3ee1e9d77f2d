"""Load on one ``webfl serve``: connections held, memory per connection, a 1,000-update
round, and what every commit costs with idle volunteers connected.

A real server runs in a subprocess on loopback; ``--procs`` generator processes
(``bench/load_swarm.py``) hold the WebSocket volunteers, which answer tasks with
precomputed q8 updates of the 2NN. In one run, in order:

1. **baseline**: 10 volunteers alone run ``--rounds`` rounds of 10 (q8);
2. **capacity**: connections stepped up through ``--steps``; at each, ``/api/status``
   latency (``--samples`` sequential requests) and the server's RSS from ``/proc``;
   it stops at the first step whose p99 exceeds ``--p99-limit-s``;
3. **idle + 10**: with the last step held, ``--rounds`` rounds of 10: bytes received
   per commit (every volunteer hears of a commit by a ``model_notice``; the model goes
   with the tasks) and the round time against the baseline, and ``/api/status`` latency
   while those rounds run;
4. **1,000 updates**: one round that selects ``--round-updates`` of the volunteers
   connected: time from the first task received to the commit.

    .venv/bin/python bench/load.py                                  # ~2-3 minutes
    .venv/bin/python bench/load.py --steps 1000,2000,5000,10000     # the 10k run

Bounded: at most ``--max-connections`` sockets, every phase has a timeout, and the whole
run stops by itself after ``--time-limit-s``. The server's per-address limits are raised
through its environment (every volunteer here comes from 127.0.0.1). Not part of the tests.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import load_swarm  # noqa: E402
from servers import TOKEN, ServerProcess, start_server  # noqa: E402

# Every generated volunteer connects from 127.0.0.1: lift the per-address caps (connections,
# frames and bytes per second) that would otherwise, rightly, refuse most of them.
SERVER_ENV = {
    "WEBFL_MAX_CONNECTIONS_PER_IP": "1000000",
    "WEBFL_IP_FRAMES_PER_S": "1000000",
    "WEBFL_IP_BYTES_PER_S": str(64 * 2**30),
    "OPENBLAS_NUM_THREADS": "1",
}
# Pace steering would send surplus ready volunteers away (a "wait" closes nothing here,
# but they would stop being idle-and-connected, which is what is measured).
RUN = {"codec": "q8", "local_epochs": 1, "max_wait_s": 0, "deadline_s": 600}


class Generators:
    """The generator processes, each holding a share of the volunteers."""

    def __init__(self, url: str, procs: int) -> None:
        ctx = mp.get_context("spawn")
        self.pipes, self.procs = [], []
        for i in range(procs):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=load_swarm.main, args=(child, url, i), daemon=True, name=f"load-{i}")
            proc.start()
            self.pipes.append(parent)
            self.procs.append(proc)

    def _ask(self, command: str, args: list, timeout_s: float) -> list[dict]:
        for pipe, arg in zip(self.pipes, args):
            pipe.send((command, arg))
        replies = []
        for pipe in self.pipes:
            if not pipe.poll(timeout_s):
                raise TimeoutError(f"a generator did not answer {command!r} in {timeout_s:g} s")
            replies.append(pipe.recv())
        return replies

    def grow(self, total: int, timeout_s: float) -> dict:
        """Hold ``total`` volunteers in all (split evenly); wait until each joined or failed."""
        n = len(self.pipes)
        shares = [total // n + (i < total % n) for i in range(n)]
        started = time.monotonic()
        replies = self._ask("grow", [{"target": s, "timeout_s": timeout_s} for s in shares], timeout_s + 30)
        return {**merge(replies), "seconds": time.monotonic() - started}

    def stats(self, clear: bool = False) -> dict:
        return merge(self._ask("clear" if clear else "stats", [None] * len(self.pipes), 120))

    def stop(self) -> None:
        try:
            self._ask("stop", [None] * len(self.pipes), 60)
        except (OSError, EOFError, TimeoutError):
            pass
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()


def merge(replies: list[dict]) -> dict:
    out = {"joined": 0, "dropped": 0, "failed": 0, "count": {}, "closes": {}, "first_task_at": None, "notice_at": {}, "ended_at": None}
    for r in replies:
        for key in ("joined", "dropped", "failed"):
            out[key] += r[key]
        for key in ("count", "closes"):
            for k, v in r[key].items():
                out[key][k] = out[key].get(k, 0) + v
        if r["first_task_at"] is not None:
            out["first_task_at"] = min(filter(None, [out["first_task_at"], r["first_task_at"]]))
        for version, at in r["notice_at"].items():
            out["notice_at"][version] = max(at, out["notice_at"].get(version, at))
        if r["ended_at"] is not None:
            out["ended_at"] = max(filter(None, [out["ended_at"], r["ended_at"]]))
    return out


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far (fields 14 and 15 of /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_average() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


#: How long one ``/api/status`` may take before it counts as unanswered: a commit that
#: pushes the model to 10,000 sockets can hold the server's event loop that long.
STATUS_TIMEOUT_S = 120.0


def get_status(server: ServerProcess) -> tuple[dict | None, float]:
    """``/api/status`` and its latency; ``None`` if it timed out (latency = the timeout)."""
    req = urllib.request.Request(server.url + "/api/status", headers={"Authorization": f"Bearer {TOKEN}"})
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=STATUS_TIMEOUT_S) as resp:
            body = json.loads(resp.read())
    except TimeoutError:
        return None, STATUS_TIMEOUT_S
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            return None, STATUS_TIMEOUT_S
        raise
    return body, time.perf_counter() - started


def status_latency(server: ServerProcess) -> float:
    return get_status(server)[1]


def peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for {pid}")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Sampler:
    """Polls ``/api/status`` from a thread while something else runs."""

    server: ServerProcess
    interval_s: float = 0.25
    samples: list[float] = field(default_factory=list)

    def __enter__(self) -> Sampler:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.samples.append(status_latency(self.server))

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(120)


def run_rounds(server: ServerProcess, gens: Generators, config: dict, timeout_s: float) -> dict:
    """Launch a run, wait for all its commits; bytes the volunteers received meanwhile."""
    before = gens.stats(clear=True)
    cpu_before = cpu_seconds(server.proc.pid)
    launched = time.time()
    code, started = server.api("POST", "/api/rounds", {**RUN, **config})
    if code != 202:
        raise RuntimeError(f"POST /api/rounds: {code} {started}")
    run_id = started["run"]

    deadline = time.monotonic() + timeout_s
    while True:
        status, _ = get_status(server)
        if status is not None and status["run"]["id"] == run_id and not status["run"]["running"]:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"run {run_id} did not end in {timeout_s:g} s")
        time.sleep(0.5)
    # The last commit's notice is on its way (paced, see rounds/announce.py) when the run
    # ends: wait until every volunteer connected has received it (or give up).
    last = f"notice of model {status['model_version']}"
    deadline = time.monotonic() + 120
    while (after := gens.stats())["count"].get(last, 0) < status["connected"] - after["dropped"] and time.monotonic() < deadline:
        time.sleep(0.25)
    # The run's end follows the last notice, paced too: the run is over once it went to all.
    ends = before["count"].get("run end", 0) + status["connected"] - after["dropped"]
    while (after := gens.stats())["count"].get("run end", 0) < ends and time.monotonic() < deadline:
        time.sleep(0.25)
    mine = [h for h in status["history"] if h["run_id"] == run_id]
    if len(mine) != config["rounds"]:
        raise RuntimeError(f"run {run_id} committed {len(mine)} of {config['rounds']} rounds")
    told = after["count"].get(last, 0) >= status["connected"] - after["dropped"]
    # From the last commit to the last volunteer hearing of it (None: not all did in time).
    notice_s = after["notice_at"][status["model_version"]] - mine[-1]["committed_at"] if told else None
    # From the last commit to the last volunteer hearing that the run ended (None: not all did).
    ended_s = after["ended_at"] - mine[-1]["committed_at"] if after["count"].get("run end", 0) >= ends else None
    received = after["count"].get("bytes in", 0) - before["count"].get("bytes in", 0)
    server_cpu = cpu_seconds(server.proc.pid) - cpu_before
    return {
        "rounds": mine,
        "launched": launched,
        "bytes_in_per_commit": received / len(mine),
        "server_bytes_down_per_commit": sum(h["bytes_down"] for h in mine) / len(mine),
        "round_s": (mine[-1]["committed_at"] - launched) / len(mine),
        "first_task_at": after["first_task_at"],
        "accepted": after["count"].get("accept", 0) - before["count"].get("accept", 0),
        "dropped": after["dropped"] - before["dropped"],
        "server_cpu_s": server_cpu,
        "wall_s": time.time() - launched,
        "notice_s": notice_s,
        "ended_s": ended_s,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", default="1000,2000", help="connections held at each capacity step")
    parser.add_argument("--procs", type=int, default=2, help="generator processes")
    parser.add_argument("--round-updates", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of 10 in the baseline and idle+10 phases")
    parser.add_argument("--samples", type=int, default=100, help="/api/status requests per capacity step")
    parser.add_argument("--p99-limit-s", type=float, default=1.0)
    parser.add_argument("--max-connections", type=int, default=12000)
    parser.add_argument("--time-limit-s", type=float, default=1800)
    parser.add_argument("--json", help="also write the measurements here")
    args = parser.parse_args()
    steps = [int(s) for s in args.steps.split(",")]
    if max(steps + [args.round_updates]) > args.max_connections:
        parser.error(f"steps above --max-connections {args.max_connections}")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = max(steps + [args.round_updates]) + 1024
    if hard < need:
        parser.error(f"the open-files limit is {hard}; {need} are needed")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by the server

    # A watchdog: the run stops by itself whatever happens.
    timer = threading.Timer(args.time_limit_s, lambda: (print("bench/load.py: time limit reached", file=sys.stderr, flush=True), os._exit(2)))
    timer.daemon = True
    timer.start()

    results: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}", "steps": [], "load": [load_average()]}
    with tempfile.TemporaryDirectory(prefix="webfl-load-") as tmp:
        server = start_server(Path(tmp) / "data", "--log-level", "warning", env=SERVER_ENV)
        gens = Generators(server.url.replace("http", "ws", 1) + "/ws", args.procs)
        try:
            phases(server, gens, args, steps, results)
        except Exception as exc:  # report what was measured, and why the rest was not
            results["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            results["load"].append(load_average())
            if server.proc.poll() is None:
                results["peak_rss"] = peak_rss_bytes(server.proc.pid)
            results["final"] = gens.stats() if all(p.is_alive() for p in gens.procs) else None
            gens.stop()
            server.stop()
    print(report(results, args))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    return 1 if "error" in results else 0


def phases(server: ServerProcess, gens: Generators, args: argparse.Namespace, steps: list[int], results: dict) -> None:
    """The four phases of the docstring, in order; ``results`` fills in as they end."""
    time.sleep(1.0)
    rss0 = results["rss0"] = rss_bytes(server.proc.pid)

    print("[load] baseline: 10 volunteers alone", flush=True)
    gens.grow(10, 60)
    results["baseline"] = run_rounds(server, gens, {"rounds": args.rounds, "clients_per_round": 10}, 300)

    held = None
    previous = (10, rss_bytes(server.proc.pid))
    for target in steps:
        print(f"[load] holding {target} connections", flush=True)
        grown = gens.grow(target, 600)
        time.sleep(2.0)
        latencies = [status_latency(server) for _ in range(args.samples)]
        rss = rss_bytes(server.proc.pid)
        step = {
            "target": target,
            "joined": grown["joined"],
            "failed": grown["failed"],
            "dropped": grown["dropped"],
            "grow_s": grown["seconds"],
            "p50": statistics.median(latencies),
            "p99": percentile(latencies, 0.99),
            "rss": rss,
            "rss_per_conn_all": (rss - rss0) / max(1, grown["joined"]),
            # The slope from the previous point: what one more connection costs.
            "rss_per_conn": (rss - previous[1]) / (grown["joined"] - previous[0]) if grown["joined"] > previous[0] else None,
            "closes": grown["closes"],
        }
        results["steps"].append(step)
        previous = (grown["joined"], rss)
        print(f"[load]   {json.dumps({k: v for k, v in step.items() if k != 'closes'})}", flush=True)
        if step["p99"] > args.p99_limit_s or grown["joined"] < target:
            break
        held = target
    if held is None:
        raise RuntimeError("not even the first step was held")

    print(f"[load] {held} connected (~{held - 10} idle), rounds of 10", flush=True)
    with Sampler(server) as sampler:
        loaded = run_rounds(server, gens, {"rounds": args.rounds, "clients_per_round": 10}, 1200)
    loaded["connected"] = gens.stats()["joined"]
    loaded["status_p50"] = statistics.median(sampler.samples) if sampler.samples else None
    loaded["status_p99"] = percentile(sampler.samples, 0.99) if sampler.samples else None
    loaded["status_max"] = max(sampler.samples, default=None)
    loaded["status_timeouts"] = sum(x >= STATUS_TIMEOUT_S for x in sampler.samples)
    loaded["peak_rss"] = peak_rss_bytes(server.proc.pid)
    results["loaded"] = loaded

    # Last: ingesting 1,000 updates leaves the server's heap larger, which would blur
    # the RSS per connection measured above.
    n = args.round_updates
    print(f"[load] one round of {n} q8 updates ({max(n, held):,} connected)", flush=True)
    grown = gens.grow(max(n, held), 300)
    if grown["joined"] < n:
        raise RuntimeError(f"only {grown['joined']} of {n} volunteers joined: {grown['closes']}")
    big = run_rounds(server, gens, {"rounds": 1, "clients_per_round": n, "min_updates": n, "select_timeout_s": 60}, 1200)
    big["first_task_to_commit_s"] = big["rounds"][0]["committed_at"] - big["first_task_at"]
    big["connected"] = grown["joined"]
    results["round"] = big


def mean_duration(phase: dict) -> float:
    return statistics.mean(h["duration_s"] for h in phase["rounds"])


def report(r: dict, args: argparse.Namespace) -> str:
    mb = 1e6
    lines = [
        f"{r['machine']}; server and {args.procs} generator processes on one machine, loopback; load average "
        f"{r['load'][0]} at the start, {r['load'][-1]} at the end (the machine is shared); server RSS at rest "
        f"{r.get('rss0', 0) / mb:.0f} MB, peak {r.get('peak_rss', 0) / mb:.0f} MB.",
        "",
        "| connections | joined | refused | dropped | time to connect | `/api/status` p50 | p99 | server RSS | RSS over rest, per connection | per added connection |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in r["steps"]:
        lines.append(
            f"| {s['target']:,} | {s['joined']:,} | {s['failed']:,} | {s['dropped']:,} | {s['grow_s']:.1f} s | {s['p50'] * 1e3:.0f} ms "
            f"| {s['p99'] * 1e3:.0f} ms | {s['rss'] / mb:.0f} MB | {s['rss_per_conn_all'] / 1024:.1f} KiB | "
            f"{'–' if s['rss_per_conn'] is None else format(s['rss_per_conn'] / 1024, '.1f') + ' KiB'} |"
        )
    base, loaded = r.get("baseline"), r.get("loaded")
    if base:
        lines += [
            "",
            f"| {args.rounds} rounds of 10 (q8 up, float32 model down with the tasks) | connected | bytes received per commit | server's bytes_down per commit "
            "| round time | server CPU per round | `/api/status` p99 (max) during the rounds |",
            "|---|---:|---:|---:|---:|---:|---:|",
            f"| 10 alone | 10 | {base['bytes_in_per_commit'] / mb:.1f} MB | {base['server_bytes_down_per_commit'] / mb:.1f} MB | {base['round_s']:.3f} s "
            f"| {base['server_cpu_s'] / args.rounds:.2f} s | – |",
        ]
    if base and loaded:
        timeouts = f", {loaded['status_timeouts']} over {STATUS_TIMEOUT_S:g} s" if loaded["status_timeouts"] else ""
        during = "–" if loaded["status_p99"] is None else f"{loaded['status_p99']:.1f} s ({loaded['status_max']:.1f} s{timeouts})"
        lines += [
            f"| {loaded['connected'] - 10:,} idle + 10 | {loaded['connected']:,} | {loaded['bytes_in_per_commit'] / mb:,.1f} MB "
            f"| {loaded['server_bytes_down_per_commit'] / mb:,.1f} MB | {loaded['round_s']:.3f} s | {loaded['server_cpu_s'] / args.rounds:.2f} s | "
            f"{during} |",
            f"| ratio | | {loaded['bytes_in_per_commit'] / base['bytes_in_per_commit']:,.0f}x | "
            f"{loaded['server_bytes_down_per_commit'] / base['server_bytes_down_per_commit']:,.0f}x | {loaded['round_s'] / base['round_s']:.2f}x "
            f"| {loaded['server_cpu_s'] / base['server_cpu_s']:.1f}x | |",
            "",
            f"The server's own round durations (mean): {mean_duration(base):.3f} s alone, {mean_duration(loaded):.3f} s with "
            f"{loaded['connected'] - 10:,} idle ({mean_duration(loaded) / mean_duration(base):.2f}x). The last commit's notice reached "
            + ("not every volunteer in time." if loaded["notice_s"] is None else
               f"every volunteer {loaded['notice_s']:.2f} s after the commit (the pass is paced, see server/rounds/announce.py).")
            + (" The run's end reached not every volunteer in time." if loaded["ended_s"] is None else
               f" The run's end (paced too, after that notice) reached every volunteer {loaded['ended_s']:.2f} s after the commit."),
        ]
    if big := r.get("round"):
        c = big["rounds"][0]
        lines += [
            "",
            f"One round of {c['participants']:,} q8 updates of the 2NN ({big['accepted']:,} accepted, {big['connected']:,} connected): "
            f"{big['first_task_to_commit_s']:.2f} s from the first task received to the commit "
            f"({c['participants'] / big['first_task_to_commit_s']:.0f} updates/s; the server's round time {c['duration_s']:.2f} s, "
            f"{c['bytes_up'] / mb:.0f} MB up; the server used {big['server_cpu_s']:.1f} s of CPU in the {big['wall_s']:.1f} s the run took).",
        ]
    if r.get("final") and r["final"]["closes"]:
        lines += ["", "Connections ended or updates refused: " + ", ".join(f"{k} ({v})" for k, v in sorted(r["final"]["closes"].items()))]
    if "error" in r:
        lines += ["", f"Stopped early: {r['error']}"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
