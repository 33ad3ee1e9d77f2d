"""``webfl serve`` and ``webfl simulate``."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
from pathlib import Path

from .server.logs import LOG_FORMATS, configure_logging

__all__ = ["main"]


def _redis_problem(url: str) -> tuple[int, str] | None:
    """Why the cluster's Redis cannot be used, said before listening and never with its
    password: exit 2 for a URL that is not one, 3 for a Redis that does not answer; or None."""
    from urllib.parse import urlsplit

    import redis

    parts = urlsplit(url)
    shown = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5)
        try:
            client.ping()
        finally:
            client.close()
    except ValueError as exc:
        return 2, f"--redis {shown}: {exc} (it looks like redis://[:PASSWORD@]HOST:PORT/N)"
    except redis.RedisError as exc:
        return 3, f"cannot use the cluster's Redis at {shown}: {exc}"
    return None


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .server.app import create_app
    from .server.config import Settings
    from .server.origins import default_public_origins, parse_origins
    from .server.storage import CorruptDatabase, DatabaseUnavailable, check_database, parse_database_url
    from .server.store import NewerSchema, Store
    from .server.taskset import read_task_file
    from .server.timeouts import http_protocol, ws_protocol

    overrides = {
        "data_dir": Path(args.data_dir),
        "task": args.task,
        "model": args.model,
        "seed": args.seed,
        "demo_partition": args.demo_partition,
        "demo_shards": args.demo_shards,
        "keep_checkpoints": args.keep_checkpoints,
        "checkpoint_every": args.checkpoint_every,
    }
    scheme = "https" if args.ssl_certfile else "http"
    try:
        overrides["tasks"] = tuple(task for path in args.task_file for task in read_task_file(Path(path)))
        if args.embed_origins is not None:
            overrides["embed_origins"] = parse_origins(args.embed_origins)
        public = parse_origins(args.public_origin or os.environ.get("WEBFL_PUBLIC_ORIGINS"))
        if args.database:
            overrides["database"] = parse_database_url(args.database)
    except ValueError as exc:
        print(f"webfl serve: {exc}", file=sys.stderr)
        return 2
    overrides["public_origins"] = public or default_public_origins(scheme, args.host, args.port)
    if not public and args.host in ("0.0.0.0", "::"):
        print("webfl serve: listening on all interfaces; browsers that reach this server by another name "
              "or address are refused on /ws unless it is given with --public-origin", file=sys.stderr, flush=True)
    if args.pyodide_url is not None:
        overrides["pyodide_url"] = args.pyodide_url
    if args.metrics_port is not None:
        overrides["metrics_host"], overrides["metrics_port"] = args.metrics_host, args.metrics_port
    if args.redis:
        member = args.member_id or f"{socket.gethostname()}-{args.port}"
        if not member.isprintable() or " " in member or len(member) > 64 or not 0.3 <= args.lease_s <= 300:
            print("webfl serve: --member-id is one printable word of at most 64 characters, --lease-s 0.3 to 300", file=sys.stderr)
            return 2
        host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else (f"[{args.host}]" if ":" in args.host else args.host)
        overrides.update(redis=args.redis, member_id=member, lease_s=args.lease_s,
                         member_url=(args.member_url or f"{scheme}://{host}:{args.port}").rstrip("/"))
    settings = Settings(**overrides)
    try:
        if settings.database is None:
            check_database(settings.store_target)  # read-only: a damaged file is left as it is
        else:
            Store(settings.database).close()  # reachable, we may sign in, and the schema is ours (migrated)
    except (CorruptDatabase, DatabaseUnavailable, NewerSchema) as exc:
        print(f"webfl serve: {exc}", file=sys.stderr, flush=True)
        return 3
    if settings.redis is not None and (problem := _redis_problem(settings.redis)) is not None:
        code, message = problem
        print(f"webfl serve: {message}", file=sys.stderr, flush=True)
        return code
    app = create_app(settings)
    print(f"webfl: serving on {scheme}://{args.host}:{args.port} (data in {settings.database or settings.data_dir}); "
          f"browsers may connect from {', '.join(settings.public_origins)}", flush=True)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
        http=http_protocol(args.header_timeout_s),
        ws=ws_protocol(settings.send_timeout_s),
        timeout_keep_alive=args.keep_alive_s,
        # X-Forwarded-For/-Proto only from these proxies: from anyone else they would let a
        # client pick the address that per-address limits and the sign-in throttle count.
        proxy_headers=bool(args.forwarded_allow_ips),
        forwarded_allow_ips=args.forwarded_allow_ips or "",
        # Float payloads barely compress and permessage-deflate costs 15-34x throughput.
        ws_per_message_deflate=False,
        # Slightly above our own limit, so an oversized frame is read whole and refused by
        # the protocol with a close reason instead of a reset mid-send; beyond the margin
        # uvicorn cuts the connection.
        ws_max_size=settings.max_frame_bytes + 1024 * 1024,
        log_level=args.log_level,
        # uvicorn's loggers go through ours (configure_logging), which escapes untrusted
        # text and writes JSON lines when asked, instead of its own handlers.
        log_config=None,
    )
    return 0


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def _simulate(args: argparse.Namespace) -> int:
    from .core.tasks import Task
    from .simulate import AdminClient, Behaviour, ServerUnreachable, Simulation

    run_config = {
        k: v
        for k, v in {
            "rounds": args.rounds,
            "clients_per_round": args.clients_per_round or args.clients,
            "local_epochs": args.local_epochs,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "deadline_s": args.deadline_s,
            "min_updates": args.min_updates,
            "codec": args.codec,
            "downlink": args.downlink,
            "mode": args.mode,
            "server_opt": args.server_opt,
            "prox_mu": args.prox_mu,
            "buffer_size": args.buffer_size,
            "over_selection": args.over_selection,
            "aggregator": args.aggregator,
            "norm_bound": args.norm_bound,
            "secagg": args.secagg,
        }.items()
        if v is not None
    }
    task = None
    if args.task is not None:
        try:
            described = AdminClient(args.server, None).request("GET", f"/api/tasks/{args.task}")
            task = Task.from_json({k: v for k, v in described.items() if k != "running"})
        except (ServerUnreachable, RuntimeError, ValueError) as exc:
            print(f"webfl simulate: task {args.task}: {exc}", file=sys.stderr)
            return 2
    elif args.data is not None:
        print("webfl simulate: --data needs --task (whose columns the CSV has, or classes the folder's sub-folders)", file=sys.stderr)
        return 2
    try:
        sim = Simulation(
            server=args.server,
            task=task,
            data=None if args.data is None else Path(args.data),
            clients=args.clients,
            partition=args.partition,
            seed=args.seed,
            token=os.environ.get("WEBFL_ADMIN_TOKEN"),
            behaviour=Behaviour(
                churn=args.churn, speed_spread=args.speed_spread, dropout=args.dropout, away_s=args.away_s,
                secagg_dropout=args.secagg_dropout,
            ),
            malicious=args.malicious,
            attack=args.attack,
        )
    except ValueError as exc:  # a bad --data file or folder, a bad partition
        print(f"webfl simulate: {exc}", file=sys.stderr)
        return 2
    if sim.malicious:
        print(f"webfl simulate: volunteers {sim.malicious} attack with {args.attack}", flush=True)
    return asyncio.run(sim.main(run_config if args.rounds else None, args.timeout_s))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="webfl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the round server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--data-dir", default=os.environ.get("WEBFL_DATA_DIR", "data"))
    serve.add_argument("--database", default=os.environ.get("WEBFL_DATABASE") or None, metavar="postgresql://USER@HOST:PORT/DB",
                       help="keep the store in this PostgreSQL database, shared by every member (default: $WEBFL_DATABASE, "
                            "else the SQLite file in the data folder); give the password in PGPASSWORD or ~/.pgpass, not here")
    serve.add_argument("--task", help="the default task, a built-in (mnist, breast-cancer, digits); "
                       "default: the first --task-file's, else mnist")
    serve.add_argument("--task-file", action="append", default=[], metavar="FILE",
                       help="serve the task(s) in this JSON file: one definition or a list (repeatable; kept in the store)")
    serve.add_argument("--model", default="2nn", help="2nn (McMahan et al.'s MLP) or softmax")
    serve.add_argument("--seed", type=int, default=0)
    serve.add_argument("--demo-partition", default="iid", help="how demo shards split the data: iid, noniid, dirichlet:A")
    serve.add_argument("--demo-shards", type=int, default=10)
    serve.add_argument("--embed-origins", help="comma-separated origins allowed to embed (default: $WEBFL_EMBED_ORIGINS)")
    serve.add_argument("--public-origin", action="append",
                       help="origin browsers reach this server at (repeatable or comma list; default: "
                            "$WEBFL_PUBLIC_ORIGINS, else scheme://host:port it listens on, plus localhost aliases)")
    serve.add_argument("--forwarded-allow-ips", default=os.environ.get("WEBFL_FORWARDED_ALLOW_IPS", ""),
                       help="comma-separated proxy addresses whose X-Forwarded-For is trusted (default: none)")
    serve.add_argument("--header-timeout-s", type=float, default=10.0, help="close a connection whose request headers take longer")
    serve.add_argument("--keep-alive-s", type=int, default=5, help="close an idle keep-alive connection after this long")
    serve.add_argument("--keep-checkpoints", type=int, default=5, help="keep the last N checkpoints")
    serve.add_argument("--checkpoint-every", type=int, default=50, help="and every K-th model version (0: none)")
    serve.add_argument("--pyodide-url", help="load Pyodide from this index URL instead of this server")
    serve.add_argument("--ssl-certfile")
    serve.add_argument("--ssl-keyfile")
    serve.add_argument("--log-level", default="info")
    serve.add_argument("--log-format", choices=LOG_FORMATS, default="text", help="json: one JSON object per line")
    serve.add_argument("--metrics-host", default="127.0.0.1", help="with --metrics-port: bind address of the unauthenticated /metrics")
    serve.add_argument("--metrics-port", type=int, help="also serve /metrics WITHOUT the admin token on this port (keep it on loopback)")
    serve.add_argument("--redis", default=os.environ.get("WEBFL_REDIS") or None, metavar="URL",
                       help="run as one member of a cluster on this Redis (redis://HOST:PORT/N; default: $WEBFL_REDIS)")
    serve.add_argument("--member-id", default=os.environ.get("WEBFL_MEMBER_ID") or None,
                       help="this member's id in the cluster, stable across restarts (default: HOSTNAME-PORT)")
    serve.add_argument("--lease-s", type=float, default=10.0, help="the leader lease: a dead leader is replaced within it")
    serve.add_argument("--member-url", default=os.environ.get("WEBFL_MEMBER_URL") or None,
                       help="where the other members reach this one (default: http://HOST:PORT; loopback for a wildcard host)")
    serve.set_defaults(func=_serve)

    sim = sub.add_parser("simulate", help="run Python volunteers against a server")
    sim.add_argument("--server", default="http://127.0.0.1:8000")
    sim.add_argument("--clients", type=int, default=10)
    sim.add_argument("--task", help="the task to train (a name the server serves; default: its default task)")
    sim.add_argument(
        "--data", metavar="FILE.csv|DIR",
        help="the task's data to share among the volunteers: a CSV (tabular tasks) or a folder with one sub-folder of "
        "PNG/JPEG images per class (image tasks); default: a built-in's shipped data",
    )
    sim.add_argument("--partition", default="iid", help="iid, noniid or dirichlet:ALPHA (over the labels)")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--rounds", type=int, help="launch this many rounds through the admin API (needs WEBFL_ADMIN_TOKEN)")
    sim.add_argument("--clients-per-round", type=int)
    sim.add_argument("--local-epochs", type=int)
    sim.add_argument("--batch-size", type=int)
    sim.add_argument("--lr", type=float)
    sim.add_argument("--deadline-s", type=float)
    sim.add_argument("--min-updates", type=int)
    sim.add_argument("--codec", help="update codec: none | [topk:F+][rot+](q1|q2|q4|q8|fp16) | topk:F")
    sim.add_argument("--downlink", help="model broadcast: none | fp16 | delta:SPEC")
    sim.add_argument("--mode", choices=["sync", "fedbuff"], help="sync rounds or FedBuff (buffered asynchronous)")
    sim.add_argument("--server-opt", help="server optimizer: fedavg, fedavgm:lr=1,momentum=0.9, fedadam:lr=0.01, fedyogi:...")
    sim.add_argument("--prox-mu", type=float, help="FedProx proximal term on the volunteers")
    sim.add_argument("--buffer-size", type=int, help="FedBuff: commit every K updates")
    sim.add_argument("--over-selection", type=float)
    sim.add_argument("--churn", type=float, default=0.0, help="probability a volunteer leaves after a job (or per idle 5 s)")
    sim.add_argument("--speed-spread", type=float, default=1.0, help="slowdowns drawn log-uniformly in [1, X]")
    sim.add_argument("--dropout", type=float, default=0.0, help="probability a volunteer vanishes mid-training")
    sim.add_argument("--away-s", type=float, default=10.0, help="mean time away after leaving")
    sim.add_argument("--aggregator", help="aggregation rule of the run: fedavg, clipped, median, trimmed_mean, multikrum (with parameters)")
    sim.add_argument("--malicious", type=float, default=0.0, help="fraction of the volunteers that attack (with --attack)")
    sim.add_argument("--attack", help="sign-flip[:K] | scale[:K] | gaussian[:SIGMA] | label-flip | backdoor[:TARGET]")
    sim.add_argument("--norm-bound", help="reject updates whose L2 norm exceeds C (fixed) or x=K (K times the recent median)")
    sim.add_argument("--secagg", type=_json_object, help='secure aggregation settings as JSON, e.g. \'{"clip": 1.0}\' (docs/secagg.md)')
    sim.add_argument("--secagg-dropout", type=float, default=0.0,
                     help="SecAgg rounds: this fraction of the cohort vanishes after uploading its masked update, before unmasking")
    sim.add_argument("--timeout-s", type=float, default=600.0, help="give up after this long")
    sim.add_argument("--log-level", default="warning", help="info logs every volunteer's state transitions")
    sim.add_argument("--log-format", choices=LOG_FORMATS, default="text", help="json: one JSON object per line")
    sim.set_defaults(func=_simulate)

    args = parser.parse_args(argv)
    if args.command == "serve" and (args.keep_checkpoints < 1 or args.checkpoint_every < 0):
        parser.error("--keep-checkpoints must be at least 1 and --checkpoint-every at least 0")
    if args.command == "simulate":
        if args.malicious and not args.attack:
            parser.error("--malicious needs --attack")
        if args.attack:
            from .core.attacks import parse_attack

            try:
                parse_attack(args.attack)
            except ValueError as exc:
                parser.error(str(exc))
    # Volunteers and rounds already use the cores in parallel; BLAS threads on top of
    # that oversubscribe them (spinning OpenBLAS threads slow a loaded machine many-fold).
    # Set before NumPy is first imported.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    configure_logging(args.log_level, args.log_format)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
