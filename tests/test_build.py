"""The set-up build: the browser's core wheel, the verified NumPy wheel, gzip copies, MNIST,
scikit-learn's breast cancer and digits.

Tests that read what ``make setup`` fetched (the Pyodide lock file, the NumPy wheel,
``build/datasets/mnist.npz``) use the real files; the rest build into ``tmp_path``.
"""

from __future__ import annotations

import base64
import csv
import gzip
import hashlib
import io
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from webfl.build import paths
from webfl.build.bytecode import PyodideBytecode, pyc_name
from webfl.build.compress import precompress
from webfl.build.datasets import (
    SKLEARN_FILES,
    breast_cancer_csv,
    build_converted,
    build_mnist,
    digits_arrays,
    fetch_sklearn_files,
)
from webfl.build.errors import BuildError, IntegrityError
from webfl.build.pyodide import LOCK_FILE, load_lock, load_manifest, locked_wheels, verify_wheel
from webfl.build.wheel import build_core_wheel
from webfl.core.data import load_npz
from webfl.core.tasks import BREAST_CANCER_FEATURES, BUILT_IN

LOCK = paths.PYODIDE_DIR / LOCK_FILE
BYTECODE = PyodideBytecode(paths.PYODIDE_DIR, paths.BYTECODE_CACHE)


@pytest.fixture
def core_wheel(tmp_path: Path) -> Path:
    return build_core_wheel(paths.PACKAGE_SRC_DIR, tmp_path, tmp_path / "webfl-core.json", bytecode=BYTECODE).path


def test_core_wheel_holds_only_the_core_and_a_valid_record(core_wheel: Path) -> None:
    src = paths.PACKAGE_SRC_DIR
    expected = {"webfl/__init__.py"} | {
        f"webfl/{p.relative_to(src).as_posix()}" for p in (src / "core").rglob("*.py")
    }
    # Each source has its bytecode for Pyodide's Python 3.12 beside it.
    compiled = {pyc_name(name, "cpython-312") for name in expected}
    dist_info = core_wheel.name.split("-py3")[0] + ".dist-info"
    with zipfile.ZipFile(core_wheel) as zf:
        names = zf.namelist()
        assert names == sorted(expected | compiled) + [f"{dist_info}/{f}" for f in ("METADATA", "WHEEL", "RECORD")]
        assert "webfl/core/__pycache__/browser.cpython-312.pyc" in names
        assert "Root-Is-Purelib: true" in zf.read(f"{dist_info}/WHEEL").decode()
        assert "Tag: py3-none-any" in zf.read(f"{dist_info}/WHEEL").decode()
        assert "Name: webfl" in zf.read(f"{dist_info}/METADATA").decode()

        rows = list(csv.reader(io.StringIO(zf.read(f"{dist_info}/RECORD").decode())))
        assert [r[0] for r in rows] == names
        assert rows[-1] == [f"{dist_info}/RECORD", "", ""]
        for name, hash_field, size in rows[:-1]:
            data = zf.read(name)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            assert hash_field == f"sha256={digest}" and int(size) == len(data), name
    for name in expected:
        assert zipfile.ZipFile(core_wheel).read(name) == (src / name.removeprefix("webfl/")).read_bytes()


def test_core_wheel_imports_alone_without_server(core_wheel: Path, tmp_path: Path) -> None:
    # -S skips site-packages and with it the editable install of the full package: the
    # only webfl on the path is the wheel, next to NumPy (which the browser has too).
    numpy_home = str(Path(np.__file__).parents[1])
    code = f"""
import sys
sys.path[:0] = [{str(core_wheel)!r}, {numpy_home!r}]
import webfl.core.models, webfl.core.volunteer, webfl.core.aggregation, webfl.core.codecs.rotation
# The core's sub-packages travel in the wheel too (the browser imports nothing else).
for mod in (webfl.core.models, webfl.core.aggregation.multikrum, webfl.core.codecs.rotation):
    assert mod.__file__.startswith({str(core_wheel)!r}), mod.__file__
for missing in ("webfl.server", "webfl.build", "webfl.cli"):
    try:
        __import__(missing)
    except ModuleNotFoundError:
        continue
    raise SystemExit(missing + " is importable from the core wheel")
print("ok", webfl.__version__)
"""
    out = subprocess.run(
        [sys.executable, "-S", "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok ")


def test_core_wheel_rebuild_is_byte_identical(tmp_path: Path) -> None:
    a = build_core_wheel(paths.PACKAGE_SRC_DIR, tmp_path / "a", tmp_path / "a" / "info.json", bytecode=BYTECODE)
    b = build_core_wheel(paths.PACKAGE_SRC_DIR, tmp_path / "b", tmp_path / "b" / "info.json", bytecode=BYTECODE)
    assert a.written and a.path.read_bytes() == b.path.read_bytes()
    assert json.loads((tmp_path / "a" / "info.json").read_text()) == {
        "version": a.version, "file": a.path.name, "sha256": hashlib.sha256(a.path.read_bytes()).hexdigest()
    }
    again = build_core_wheel(paths.PACKAGE_SRC_DIR, tmp_path / "a", tmp_path / "a" / "info.json", bytecode=BYTECODE)
    assert not again.written and again.sha256 == a.sha256


def test_bytecode_is_reproducible_and_compiled_once_per_source(tmp_path: Path, monkeypatch) -> None:
    sources = {"webfl/core/specs.py": (paths.PACKAGE_SRC_DIR / "core" / "specs.py").read_bytes(), "webfl/x.py": b"S = {'a', 'b', 'c'}\n"}
    first = PyodideBytecode(paths.PYODIDE_DIR, tmp_path / "one")(sources)
    second = PyodideBytecode(paths.PYODIDE_DIR, tmp_path / "two")(sources)  # a fresh Pyodide, no cache
    assert first == second and set(first) == {"webfl/core/__pycache__/specs.cpython-312.pyc", "webfl/__pycache__/x.cpython-312.pyc"}
    # PEP 552 checked-hash: magic of Python 3.12 (3531), flags 0b11, then the source's hash.
    pyc = first["webfl/__pycache__/x.cpython-312.pyc"]
    assert pyc[:4] == (3531).to_bytes(2, "little") + b"\r\n" and pyc[4:8] == (3).to_bytes(4, "little")
    # Unchanged sources come from the cache: no Node at all.
    monkeypatch.setattr("webfl.build.bytecode.shutil.which", lambda name: None)
    assert PyodideBytecode(paths.PYODIDE_DIR, tmp_path / "one")(sources) == first
    with pytest.raises(BuildError, match="node is needed"):
        PyodideBytecode(paths.PYODIDE_DIR, tmp_path / "one")({**sources, "webfl/x.py": b"S = 1\n"})


def test_core_wheel_of_another_version_replaces_the_old_one(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(paths.PACKAGE_SRC_DIR / "core", src / "core", ignore=shutil.ignore_patterns("__pycache__"))
    (src / "__init__.py").write_text('__version__ = "9.9.9"\n')
    out = tmp_path / "out"
    out.mkdir()
    (out / "webfl-0.0.1-py3-none-any.whl").write_bytes(b"old")
    built = build_core_wheel(src, out, out / "info.json", bytecode=BYTECODE)
    assert sorted(p.name for p in out.glob("*.whl")) == ["webfl-9.9.9-py3-none-any.whl"]
    assert built.version == "9.9.9"


def test_manifest_agrees_with_pyodide_lock() -> None:
    manifest = load_manifest(paths.MANIFEST)
    assert manifest.pyodide_version == "0.27.7"
    wheels = locked_wheels(manifest, load_lock(paths.PYODIDE_DIR, manifest.pyodide_version))
    assert [w.name for w in wheels] == ["numpy"]
    assert wheels[0].file_name == "numpy-2.0.2-cp312-cp312-pyodide_2024_0_wasm32.whl"


def test_manifest_that_disagrees_with_the_lock_is_rejected(tmp_path: Path) -> None:
    raw = json.loads(paths.MANIFEST.read_text())
    raw["lock_entries"]["numpy"]["sha256"] = "0" * 64
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    manifest = load_manifest(tmp_path / "manifest.json")
    with pytest.raises(BuildError, match="update the manifest"):
        locked_wheels(manifest, load_lock(paths.PYODIDE_DIR, manifest.pyodide_version))


def test_wrong_pyodide_version_is_rejected() -> None:
    with pytest.raises(BuildError, match="0.27.7"):
        load_lock(paths.PYODIDE_DIR, "0.26.0")


def test_fetched_numpy_wheel_matches_the_lock(tmp_path: Path) -> None:
    name = json.loads(LOCK.read_text())["packages"]["numpy"]["file_name"]
    copy = tmp_path / name
    shutil.copyfile(paths.WHEELS_DIR / name, copy)
    assert verify_wheel(copy, LOCK, "numpy") == json.loads(LOCK.read_text())["packages"]["numpy"]["sha256"]
    assert copy.is_file()


def test_tampered_numpy_wheel_is_rejected_and_deleted(tmp_path: Path) -> None:
    name = json.loads(LOCK.read_text())["packages"]["numpy"]["file_name"]
    tampered = tmp_path / name
    shutil.copyfile(paths.WHEELS_DIR / name, tampered)
    with tampered.open("r+b") as f:
        f.seek(1000)
        f.write(b"garbage")
    actual = hashlib.sha256(tampered.read_bytes()).hexdigest()
    expected = json.loads(LOCK.read_text())["packages"]["numpy"]["sha256"]

    with pytest.raises(IntegrityError) as err:
        verify_wheel(tampered, LOCK, "numpy")
    message = str(err.value)
    assert name in message and actual in message and expected in message
    assert not tampered.exists()


def test_precompress_keeps_only_worthwhile_deterministic_gz(tmp_path: Path) -> None:
    text = tmp_path / "pyodide.asm.js"
    text.write_bytes(b"function f() { return 42; }\n" * 5000)
    noise = tmp_path / "numpy.whl"
    noise.write_bytes(np.random.default_rng(0).bytes(100_000))
    out = tmp_path / "gz"
    out.mkdir()
    (out / "old-wheel.whl.gz").write_bytes(b"stale")

    first = precompress([text, noise], out)
    assert sorted(p.name for p in out.iterdir()) == ["pyodide.asm.js.gz", "sizes.json"]
    assert gzip.decompress((out / "pyodide.asm.js.gz").read_bytes()) == text.read_bytes()
    assert first.files["numpy.whl"]["gz"] is None
    assert json.loads((out / "sizes.json").read_text())["files"] == first.files

    gz_bytes = (out / "pyodide.asm.js.gz").read_bytes()
    assert precompress([text, noise], out).recompressed == []
    assert precompress([text, noise], out, force=True).recompressed == ["pyodide.asm.js", "numpy.whl"]
    assert (out / "pyodide.asm.js.gz").read_bytes() == gz_bytes


def test_mnist_npz_from_setup() -> None:
    train, test = load_npz(paths.MNIST_NPZ, "train"), load_npz(paths.MNIST_NPZ, "test")
    assert train.x.shape == (8000, 784) and test.x.shape == (2000, 784)
    for split in (train, test):
        assert split.x.dtype == np.uint8 and split.y.dtype == np.uint8
        assert set(np.unique(split.y)) == set(range(10))
    assert train.x.max() == 255 and 0.05 < train.x.mean() / 255 < 0.25


def _tiny_digits(root: Path, per_class: int = 3) -> Path:
    rng = np.random.default_rng(1)
    for label in range(10):
        pixels = rng.integers(0, 256, size=per_class * 784) / 255
        (root / f"{label}.json").write_text(json.dumps({"data": [round(v, 3) for v in pixels]}))
    return root


def test_mnist_conversion_recovers_bytes_and_splits(tmp_path: Path) -> None:
    digits = _tiny_digits(tmp_path)
    out = tmp_path / "out" / "mnist.npz"
    built = build_mnist(digits, out, n_test=5)
    assert (built.n_train, built.n_test, built.written) == (25, 5, True)

    with np.load(out) as f:
        assert sorted(f.files) == ["x_test", "x_train", "y_test", "y_train"]
        x = np.concatenate([f["x_test"], f["x_train"]])
        y = np.concatenate([f["y_test"], f["y_train"]])
    order = np.random.default_rng(0).permutation(30)
    rng = np.random.default_rng(1)
    original = np.concatenate([rng.integers(0, 256, size=3 * 784) for _ in range(10)]).reshape(30, 784)
    np.testing.assert_array_equal(x, original[order])
    np.testing.assert_array_equal(y, np.repeat(np.arange(10), 3)[order])

    npz = out.read_bytes()
    assert not build_mnist(digits, out, n_test=5).written
    assert build_mnist(digits, out, n_test=5, force=True).written and out.read_bytes() == npz
    (digits / "3.json").write_text(json.dumps({"data": [0.0] * 3 * 784}))
    assert build_mnist(digits, out, n_test=5).written


def test_sklearn_data_from_setup() -> None:
    for name, sha256 in SKLEARN_FILES.items():
        assert hashlib.sha256((paths.SKLEARN_DATA / name).read_bytes()).hexdigest() == sha256
    header = paths.BREAST_CANCER_CSV.read_text().splitlines()[0].split(",")
    assert header == [*BREAST_CANCER_FEATURES, "diagnosis"]
    train, test = load_npz(paths.DIGITS_NPZ, "train"), load_npz(paths.DIGITS_NPZ, "test")
    assert train.x.shape == (1500, 64) and test.x.shape == (297, 64) and train.x.dtype == np.uint8
    assert train.x.max() == 255 and set(np.unique(test.y)) == set(range(10))


def _fake_sklearn_wheel(cache: Path, version: str, files: dict[str, bytes]) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(cache / f"scikit_learn-{version}-py3-none-any.whl", "w") as zf:
        for name, data in files.items():
            zf.writestr(f"sklearn/datasets/data/{name}", data)


def test_sklearn_files_are_extracted_once_and_verified(tmp_path: Path) -> None:
    good = b"1,2,3\n"
    pinned = {"a.csv": hashlib.sha256(good).hexdigest()}
    _fake_sklearn_wheel(tmp_path / "cache", "9.9.9", {"a.csv": good})
    fetch = lambda **kw: fetch_sklearn_files(  # noqa: E731
        tmp_path / "out", tmp_path / "cache", requirement="scikit-learn==9.9.9", pinned=pinned, **kw)
    assert fetch() == {"a.csv": True} and (tmp_path / "out" / "a.csv").read_bytes() == good
    assert fetch() == {"a.csv": False}
    assert fetch(force=True) == {"a.csv": True}
    (tmp_path / "out" / "a.csv").write_bytes(b"tampered")
    assert fetch() == {"a.csv": True} and (tmp_path / "out" / "a.csv").read_bytes() == good

    _fake_sklearn_wheel(tmp_path / "cache2", "9.9.9", {"a.csv": b"not the pinned bytes"})
    with pytest.raises(IntegrityError, match="a.csv"):
        fetch_sklearn_files(tmp_path / "out2", tmp_path / "cache2", requirement="scikit-learn==9.9.9", pinned=pinned)
    assert not (tmp_path / "out2" / "a.csv").exists()


def test_breast_cancer_conversion_gives_an_operator_csv() -> None:
    row = ",".join(str(i + 0.5) for i in range(30))
    source = f"2,30,malignant,benign\n{row},0\n{row},1\n".encode()
    data = BUILT_IN["breast-cancer"].parse_csv(breast_cancer_csv(source, BREAST_CANCER_FEATURES))
    assert data.y.tolist() == [0, 1]
    np.testing.assert_array_equal(data.x[0], np.arange(30) + 0.5)
    for bad in (b"2,29,malignant,benign\n", f"3,30,malignant,benign\n{row},0\n".encode(),
                f"1,30,malignant,benign\n{row},2\n".encode()):
        with pytest.raises(BuildError):
            breast_cancer_csv(bad, BREAST_CANCER_FEATURES)


def test_digits_conversion_scales_counts_to_bytes() -> None:
    rows = [[(i + j) % 17 for j in range(64)] + [i % 10] for i in range(20)]
    source = gzip.compress("\n".join(",".join(map(str, r)) for r in rows).encode())
    arrays = digits_arrays(source, n_test=5)
    x = np.concatenate([arrays["x_test"], arrays["x_train"]])
    order = np.random.default_rng(0).permutation(20)
    expected = np.rint(np.array(rows)[:, :64] * 255 / 16).astype(np.uint8)[order]
    np.testing.assert_array_equal(x, expected)
    with pytest.raises(BuildError):
        digits_arrays(gzip.compress(b"1,2,3\n"), n_test=1)


def test_converted_files_are_rebuilt_only_when_their_source_changes(tmp_path: Path) -> None:
    source, out = tmp_path / "in.txt", tmp_path / "out" / "in.csv"
    source.write_bytes(b"a")
    upper = lambda raw: raw.upper()  # noqa: E731
    assert build_converted(source, out, upper) and out.read_bytes() == b"A"
    assert not build_converted(source, out, upper)
    assert build_converted(source, out, upper, force=True)
    source.write_bytes(b"b")
    assert build_converted(source, out, upper) and out.read_bytes() == b"B"
    out.write_bytes(b"edited")
    assert build_converted(source, out, upper) and out.read_bytes() == b"B"


def test_build_cli_second_run_changes_nothing() -> None:
    for _ in range(2):
        out = subprocess.run([sys.executable, "-m", "webfl.build"], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
    assert "verified sha256" in out.stdout
    assert " built" not in out.stdout and "compressed now" not in out.stdout and "extracted" not in out.stdout, out.stdout
