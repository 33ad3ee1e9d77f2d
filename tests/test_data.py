import numpy as np
import pytest

from webfl.core.data import Dataset, features, load_npz, parse_csv, partition

LABELS = np.repeat(np.arange(10), 100).astype(np.uint8)


@pytest.mark.parametrize("spec", ["iid", "noniid", "dirichlet:0.5", "dirichlet:100"])
def test_partition_covers_every_example_exactly_once(spec):
    shards = partition(LABELS, 10, spec, seed=1)
    assert len(shards) == 10 and all(len(s) for s in shards)
    np.testing.assert_array_equal(np.sort(np.concatenate(shards)), np.arange(len(LABELS)))


@pytest.mark.parametrize("spec", ["iid", "noniid", "dirichlet:0.5"])
def test_partition_is_deterministic_for_a_seed(spec):
    a, b, c = (partition(LABELS, 10, spec, seed=s) for s in (1, 1, 2))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def labels_per_shard(spec):
    return [len(np.unique(LABELS[s])) for s in partition(LABELS, 10, spec, seed=0)]


def test_skew_orders_iid_dirichlet_pathological():
    iid, dirichlet, noniid = (labels_per_shard(s) for s in ("iid", "dirichlet:0.1", "noniid"))
    assert min(iid) == 10
    assert max(noniid) <= 2
    assert np.mean(noniid) < np.mean(dirichlet) < np.mean(iid)


@pytest.mark.parametrize("spec", ["", "dirichlet", "dirichlet:0", "dirichlet:-1", "dirichlet:x", "iid:3", "shards"])
def test_bad_partition_specs(spec):
    with pytest.raises(ValueError, match="partition"):
        partition(LABELS, 10, spec)


def test_npz_round_trip_from_bytes(tmp_path):
    ds = Dataset(np.arange(12, dtype=np.uint8).reshape(3, 4), np.array([0, 1, 2], np.uint8))
    np.savez(tmp_path / "t.npz", x_train=ds.x, y_train=ds.y, x_test=ds.x[:1], y_test=ds.y[:1])
    loaded = load_npz((tmp_path / "t.npz").read_bytes(), "train")
    assert loaded.x.tobytes() == ds.x.tobytes() and len(load_npz(tmp_path / "t.npz", "test")) == 1
    assert features(loaded.x).max() == pytest.approx(11 / 255)


def test_csv_with_header_and_unit_scale():
    text = "label,a,b,c\n1,0,0.5,1\n0,1,1,0\n"
    ds = parse_csv(text, num_features=3, num_classes=2)
    assert ds.y.tolist() == [1, 0]
    assert ds.x.tolist() == [[0, 128, 255], [255, 255, 0]]


def test_csv_with_pixel_scale():
    assert parse_csv("2,0,17,255", 3, 3).x.tolist() == [[0, 17, 255]]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "no data rows"),
        ("label,a\n", "no data rows"),
        ("1,2\n", "needs a label and 3 features"),
        ("1,a,b,c\n", "not a numeric CSV"),
        ("3,0,0,0\n", "row 1: label must be an integer in 0..2"),
        ("0,0,0,0\n1.5,0,0,0\n", "row 2"),
        ("0,0,0,300\n", "features must be"),
        ("0,0,nan,1\n", "features must be"),
    ],
)
def test_csv_errors_say_what_to_fix(text, reason):
    with pytest.raises(ValueError, match=reason):
        parse_csv(text, num_features=3, num_classes=3)
