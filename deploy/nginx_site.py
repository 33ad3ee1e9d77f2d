"""Render ``deploy/nginx/webfl.conf`` for given members and listen address.

    python3 deploy/nginx_site.py --listen 8080 127.0.0.1:8001 127.0.0.1:8002 > /etc/nginx/conf.d/webfl.conf
    python3 deploy/nginx_site.py --standalone DIR 127.0.0.1:8001 > DIR/nginx.conf   # nginx -p DIR -c DIR/nginx.conf

``--standalone`` wraps the site in a whole ``nginx.conf`` whose files (pid, logs,
temporary bodies) all live in DIR, for an nginx outside ``/etc/nginx`` (``local.sh``, the tests).

Only the upstream's ``server`` lines and the ``listen`` line change; everything else is
the file as committed (stdlib only: runs with any Python 3.9+, no webfl install needed).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

SITE = Path(__file__).resolve().parent / "nginx" / "webfl.conf"


def site_config(members: list[str], listen: str, template: str | None = None) -> str:
    """``members`` as ``host:port``; ``listen`` as nginx takes it (``8080``, ``127.0.0.1:8080``)."""
    if not members:
        raise ValueError("at least one member")
    site = SITE.read_text() if template is None else template
    block = re.search(r"upstream webfl_members \{\n.*?\n\}", site, re.S)
    if block is None:
        raise ValueError(f"{SITE}: no upstream webfl_members block")
    kept = [line for line in block.group(0).splitlines() if not re.match(r"\s*#?\s*server ", line)]
    upstream = "\n".join([*kept[:-1], *(f"    server {m};" for m in members), kept[-1]])
    site, n = re.subn(r"listen \S+;", f"listen {listen};", site.replace(block.group(0), upstream))
    if n != 1:
        raise ValueError(f"{SITE}: expected one listen line, found {n}")
    return site


def standalone_config(members: list[str], listen: str, prefix: Path) -> str:
    """A complete ``nginx.conf`` with every file in ``prefix``; ``prefix/temp`` must be writable by the workers."""
    temp = "\n".join(f"    {kind}_temp_path {prefix}/temp/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    site = "\n".join(f"    {line}" if line else "" for line in site_config(members, listen).splitlines())
    return f"""worker_processes auto;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
# Each volunteer holds a socket to the client and one to a member.
worker_rlimit_nofile 65536;
events {{
    worker_connections 32768;
}}
http {{
    access_log {prefix}/access.log;
{temp}

{site}
}}
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", default="8080")
    parser.add_argument("--standalone", metavar="DIR", type=Path, help="emit a whole nginx.conf keeping its files in DIR")
    parser.add_argument("members", nargs="+", help="host:port of each webfl member")
    args = parser.parse_args()
    if args.standalone:
        sys.stdout.write(standalone_config(args.members, args.listen, args.standalone.resolve()))
    else:
        sys.stdout.write(site_config(args.members, args.listen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
