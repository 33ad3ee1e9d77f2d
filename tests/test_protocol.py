import json
import struct

import numpy as np
import pytest

from webfl.core.protocol import (
    CLOSE_TOO_BIG,
    MAGIC,
    Message,
    ProtocolError,
    decode,
    encode,
)

UPDATE = {"round": 3, "model_version": 2, "num_examples": 80, "loss": 0.5, "accuracy": 0.9, "codec": "none", "codec_params": {}, "token": "t"}


def raw(header: dict | bytes, payload: bytes = b"") -> bytes:
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    pad = bytes(-(8 + len(h)) % 8)
    return struct.pack("<4sI", MAGIC, len(h)) + h + pad + payload


def test_round_trip_keeps_fields_and_arrays_bit_exact():
    arrays = (np.arange(13, dtype=np.float32) / 7, np.array([1, 2, 255], dtype=np.uint8), np.ones((2, 3), "<f2"))
    msg = decode(encode(Message("update", UPDATE, arrays)))
    assert msg.type == "update" and msg.fields == UPDATE
    for a, b in zip(arrays, msg.arrays):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def test_arrays_are_8_byte_aligned_and_read_in_place():
    frame = encode(Message("update", UPDATE, (np.zeros(3, np.uint8), np.arange(5, dtype=np.float32))))
    assert len(frame) % 8 == 0
    msg = decode(frame)
    assert not msg.arrays[1].flags.writeable  # a view into the frame, not a copy


def test_big_endian_input_is_written_little_endian():
    frame = encode(Message("update", UPDATE, (np.arange(4, dtype=">f4"),)))
    assert decode(frame).arrays[0].dtype.str == "<f4"
    np.testing.assert_array_equal(decode(frame).arrays[0], [0, 1, 2, 3])


def test_message_without_arrays():
    assert decode(encode(Message("ready", {"num_examples": 5}))).fields == {"num_examples": 5}


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"WFL", "too short"),
        (b"XYZ\x01" + bytes(12), "bad magic"),
        (b"WFL\x07" + bytes(12), "protocol version 7"),
        (struct.pack("<4sI", MAGIC, 10**6) + bytes(8), "header length"),
        (struct.pack("<4sI", MAGIC, 4) + b"\xff\xfe{}", "not valid JSON"),
        (raw([1, 2]), "JSON object"),
        (raw({"type": "nope"}), "unknown message type"),
        (raw({"type": "ready"}), "missing field 'num_examples'"),
        (raw({"type": "ready", "num_examples": 1, "extra": 2}), "unexpected field"),
        (raw({"type": "ready", "num_examples": "5"}), "wrong type"),
        (raw({"type": "ready", "num_examples": True}), "wrong type"),
        (raw(json.dumps({"type": "update", **UPDATE, "loss": 1.5}).encode().replace(b"1.5", b"9e999")), "must be finite"),
        (raw({"type": "update", **UPDATE, "arrays": [["<f8", [1]], ["|O", [1]]]}, bytes(8)), "dtype '|O' is not allowed"),
        (raw({"type": "update", **UPDATE, "arrays": [[">f4", [1]]]}, bytes(8)), "dtype '>f4' is not allowed"),
        (raw({"type": "update", **UPDATE, "arrays": [["<f4", [-1]]]}), "bad array shape"),
        (raw({"type": "update", **UPDATE, "arrays": [["<f4", [4]]]}, bytes(8)), "shorter than its arrays"),
        (raw({"type": "update", **UPDATE, "arrays": [["<f4", [2]]]}, bytes(16)), "does not match"),
        (raw({"type": "update", **UPDATE, "arrays": "x"}), "'arrays' must be a list"),
        (raw({"type": "update", **UPDATE, "arrays": [["<f4", [1]]] * 17}), "at most 16"),
    ],
)
def test_malformed_frames_are_rejected_with_a_reason(frame, reason):
    with pytest.raises(ProtocolError, match=reason):
        decode(frame)


def test_nan_constant_in_header_is_rejected():
    frame = raw(b'{"type": "ready", "num_examples": NaN}')
    with pytest.raises(ProtocolError, match="not valid JSON"):
        decode(frame)


def test_oversized_frame_gets_the_too_big_close_code():
    frame = encode(Message("update", UPDATE, (np.zeros(1000, np.float32),)))
    with pytest.raises(ProtocolError) as info:
        decode(frame, max_bytes=1000)
    assert info.value.code == CLOSE_TOO_BIG


def test_encode_refuses_invalid_messages():
    with pytest.raises(ProtocolError):
        encode(Message("update", {**UPDATE, "round": "3"}))
    with pytest.raises(ValueError):
        encode(Message("update", {**UPDATE, "loss": float("nan")}))
