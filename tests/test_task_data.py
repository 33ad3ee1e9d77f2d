"""A task's own data: labelled and unlabelled CSVs matched by header, and decoded images."""

import numpy as np
import pytest

from webfl.core.data import image_dataset, image_inputs, parse_task_csv, parse_unlabelled_csv

FEATURES = ["age", "chol", "bp"]
CLASSES = ["no", "yes"]


def parse(text, **kw):
    return parse_task_csv(text, FEATURES, "target", CLASSES, **kw)


def test_columns_match_by_name_in_any_order_and_extras_are_ignored():
    text = 'id,bp,note,target,chol,age\n1,120,"fine, really",yes,200,54\n2,130.5,x,no,180,61\n'
    data = parse(text)
    np.testing.assert_array_equal(data.x, np.array([[54, 200, 120], [61, 180, 130.5]], np.float32))
    assert data.x.dtype == np.float32 and data.y.tolist() == [1, 0]
    assert parse(text.replace('"fine, really"', "fine")).x.tolist() == data.x.tolist()  # fast path, same answer


def test_labels_are_names_or_indices_and_a_name_wins():
    assert parse("age,chol,bp,target\n1,2,3,1\n4,5,6,no\n7,8,9, yes \n").y.tolist() == [1, 0, 1]
    # Classes spelled like indices: "1" is the class named "1" (index 0), not index 1.
    d = parse_task_csv("a,y\n0,1\n0,0\n0,2\n", ["a"], "y", ["1", "0", "2"])
    assert d.y.tolist() == [0, 1, 2]


def test_bytes_bom_crlf_blank_lines_and_whitespace_are_fine():
    raw = "\ufeffage, chol ,bp,target\r\n\r\n 1 ,2,3,no\r\n4,5e1,-6,yes\r\n\r\n".encode()
    data = parse(raw)
    assert data.x.tolist() == [[1, 2, 3], [4, 50, -6]] and data.y.tolist() == [0, 1]


@pytest.mark.parametrize(("text", "message"), [
    ("age,chol,target\n1,2,no\n", "line 1: the header has no column 'bp'"),
    ("age,chol\n1,2\n", "line 1: the header has no column 'bp' (and 1 more)"),
    ("age,chol,bp,bp,target\n1,2,3,4,no\n", "line 1: column 'bp' appears twice"),
    ("age,chol,bp,target\n1,2,3,no\n4,5,6\n", "line 3: 3 values, but the header has 4 columns"),
    ("age,chol,bp,target\n\n1,2,3,no\n4,x5,6,no\n", "line 4, column 'chol' has 'x5', not a number"),
    ("age,chol,bp,target\n1,2,,no\n", "line 2, column 'bp' is empty"),
    ("age,chol,bp,target\n1,2,3,no\n1,inf,3,no\n", "line 3, column 'chol' has 'inf', not a finite number"),
    ("age,chol,bp,target\n1,2,1e39,no\n", "line 2, column 'bp' has '1e39', not a finite number"),
    ("age,chol,bp,target\n1,2,3,no\n1,2,3,maybe\n", "line 3, column 'target' has 'maybe': a label must be one of the classes ('no', 'yes') or an index 0..1"),
    ("age,chol,bp,target\n1,2,3,2\n", "line 2, column 'target' has '2'"),
    ("age,chol,bp,target\n1,2,3,-1\n", "line 2, column 'target' has '-1'"),
    ("age,chol,bp,target\n", "a header but no data rows"),
    ("\n \n", "the file is empty"),
    ('age,chol,bp,target\n1,2,"3,4",no\n', "line 2, column 'bp' has '3,4', not a number"),
])
def test_errors_name_the_line_and_column(text, message):
    with pytest.raises(ValueError) as err:
        parse(text)
    assert message in str(err.value)


@pytest.mark.parametrize("raw", [
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)),
    b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + b"\xff\xfe" * 50,
    "age,chol,bp,target\n1,2,3,no\n4,5\x00,6,no\n".encode(),
    b"age,chol,bp,target\n1,2,3,\xe9\n",  # Latin-1, not UTF-8
])
def test_binary_files_are_refused_without_echoing_bytes(raw):
    with pytest.raises(ValueError) as err:
        parse(raw)
    message = str(err.value)
    assert message.startswith("not a text CSV")
    assert message.isprintable() and "\\x" not in message and "PNG" not in message and "PK" not in message


def test_unlabelled_csv_for_prediction():
    x = parse_unlabelled_csv("chol,name,age,bp\n200,ann,54,120\n180,bob,61,130\n", FEATURES)
    assert x.tolist() == [[54, 200, 120], [61, 180, 130]]
    # A label column, if there, is ignored like any extra column.
    assert parse_unlabelled_csv("age,chol,bp,target\n1,2,3,nonsense\n", FEATURES).tolist() == [[1, 2, 3]]
    with pytest.raises(ValueError, match="line 1: the header has no column 'bp'"):
        parse_unlabelled_csv("age,chol\n1,2\n", FEATURES)


def test_large_csv_parses_exactly():
    rng = np.random.default_rng(0)
    n = 30_000
    values = rng.normal(0, 100, (n, 3))
    rows = "\n".join(f"{i},{c:.6g},{a:.6g},{b:.6g},{'no' if i % 3 else 'yes'}" for i, (a, b, c) in enumerate(values))
    data = parse(f"id,bp,age,chol,target\n{rows}\n")
    assert data.x.shape == (n, 3)
    np.testing.assert_allclose(data.x, values, rtol=1e-5)  # columns back in the task's order
    assert data.y.sum() == len(range(0, n, 3))


def test_images_are_validated_and_scaled():
    pixels = np.arange(2 * 3 * 4 * 1, dtype=np.uint8).reshape(2, 3, 4, 1) * 10
    data = image_dataset(pixels, np.array([0, 2]), (3, 4, 1), num_classes=3)
    assert data.x.shape == (2, 12) and data.x.dtype == np.float32
    np.testing.assert_allclose(data.x[1], pixels[1].reshape(-1) / 255, rtol=1e-6)
    assert data.y.tolist() == [0, 2] and data.y.dtype == np.uint8
    assert image_inputs(pixels, (3, 4, 1)).shape == (2, 12)
    for bad_pixels in (pixels.astype(np.float32), pixels[:, :, :3], pixels.reshape(2, 12), pixels[:0]):
        with pytest.raises(ValueError, match="images must"):
            image_inputs(bad_pixels, (3, 4, 1))
    for bad_labels in (np.array([0]), np.array([0, 3]), np.array([0, -1]), np.array([0.0, 1.0]), np.array([[0, 1]])):
        with pytest.raises(ValueError, match="labels must"):
            image_dataset(pixels, bad_labels, (3, 4, 1), num_classes=3)
