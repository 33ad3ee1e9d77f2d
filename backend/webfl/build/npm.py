"""Check that ``node_modules`` holds exactly the versions ``package.json`` pins.

``npm ci`` guarantees this right after it runs; the check catches a tree changed since
(an ``npm install`` of something else, a partial copy) before the server serves from it.
"""

from __future__ import annotations

from pathlib import Path

from .errors import BuildError
from .files import read_json


def check_npm_packages(root: Path) -> dict[str, str]:
    """Name to version of each dependency in ``root/package.json``, as installed."""
    pinned = (read_json(root / "package.json") or {}).get("dependencies", {})
    if not pinned:
        raise BuildError(f"{root / 'package.json'} lists no dependencies")
    for name, version in pinned.items():
        installed = (read_json(root / "node_modules" / name / "package.json") or {}).get("version")
        if installed != version:
            raise BuildError(
                f"node_modules/{name} is {installed or 'missing'}, package.json pins {version}: "
                "run `npm ci` (or `make setup`)"
            )
    return dict(pinned)
