"""Unit tests of embcache.codec: validation and encoding of ids, vectors, metadata and parameters. No Redis."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from embcache.core.codec import (
    MAX_ID_BYTES,
    MAX_METADATA_BYTES,
    check_ids,
    check_matrix,
    check_metadatas,
    check_n_results,
    check_space_params,
    decode_vectors,
    encode_vectors,
    normalise,
)
from embcache.core.errors import DimensionMismatch, InvalidInput

# --- ids ---------------------------------------------------------------------------------------------------


def test_ids_list_tuple_array_and_single_str() -> None:
    assert check_ids(["a", "b"]) == ["a", "b"]
    assert check_ids(("a", "b")) == ["a", "b"]
    assert check_ids(np.array(["a", "b"])) == ["a", "b"]
    assert check_ids("abc") == ["abc"]  # one id, not three
    out = check_ids(np.array(["x"]))
    assert type(out[0]) is str


@pytest.mark.parametrize("ids", [[], (), np.array([], dtype=str)])
def test_ids_empty_batch(ids: object) -> None:
    with pytest.raises(InvalidInput, match="empty"):
        check_ids(ids)


def test_ids_empty_string() -> None:
    with pytest.raises(InvalidInput, match=r"ids\[1\].*empty"):
        check_ids(["a", ""])
    with pytest.raises(InvalidInput):
        check_ids("")


def test_ids_byte_limit_ascii() -> None:
    assert check_ids(["x" * MAX_ID_BYTES]) == ["x" * MAX_ID_BYTES]
    with pytest.raises(InvalidInput, match="513 bytes"):
        check_ids(["x" * (MAX_ID_BYTES + 1)])


def test_ids_byte_limit_counts_utf8_bytes_not_chars() -> None:
    two = "é"  # 2 bytes in UTF-8
    four = "😀"  # 4 bytes
    assert len(two.encode()) == 2 and len(four.encode()) == 4
    assert check_ids([two * 256]) == [two * 256]  # 512 bytes
    with pytest.raises(InvalidInput, match="514 bytes"):
        check_ids([two * 257])  # 257 chars, 514 bytes
    assert check_ids([four * 128])
    with pytest.raises(InvalidInput):
        check_ids([four * 129])  # 129 chars but 516 bytes
    with pytest.raises(InvalidInput):
        check_ids(["x" * 511 + two])  # 513 bytes, 512 chars


def test_ids_lone_surrogate_rejected() -> None:
    with pytest.raises(InvalidInput, match="Unicode"):
        check_ids(["ok", "bad\ud800"])


def test_ids_duplicates() -> None:
    with pytest.raises(InvalidInput, match="'b'"):
        check_ids(["a", "b", "c", "b"])
    assert check_ids(["a", "b", "a"], allow_duplicates=True) == ["a", "b", "a"]


@pytest.mark.parametrize("bad", [[1], ["a", None], ["a", b"b"], [["a"]], ["a", 1.0], [True]])
def test_ids_non_str_items(bad: list) -> None:
    with pytest.raises(InvalidInput, match=r"ids\[\d\] must be a str"):
        check_ids(bad)


@pytest.mark.parametrize("bad", [None, 5, b"abc", {"a": 1}, {"a"}, (x for x in ["a"]), 1.5])
def test_ids_non_list(bad: object) -> None:
    with pytest.raises(InvalidInput):
        check_ids(bad)


def test_ids_error_is_value_error() -> None:
    with pytest.raises(ValueError):
        check_ids([])


# --- matrices ----------------------------------------------------------------------------------------------


def test_matrix_from_lists_ints_and_float64() -> None:
    out = check_matrix([[1, 2, 3], [4, 5, 6]], 3)
    assert out.dtype == np.float32 and out.shape == (2, 3) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, np.array([[1, 2, 3], [4, 5, 6]], dtype=np.float32))
    out = check_matrix(np.arange(6, dtype=np.float64).reshape(2, 3), 3)
    assert out.dtype == np.float32
    out = check_matrix(np.arange(6, dtype=np.int16).reshape(2, 3), 3)
    np.testing.assert_array_equal(out, np.arange(6).reshape(2, 3))
    out = check_matrix(np.ones((2, 3), dtype=np.float16), 3)
    assert out.dtype == np.float32


def test_matrix_non_contiguous_input_made_contiguous() -> None:
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    view = base[:, ::2]  # (4, 3), not contiguous
    assert not view.flags.c_contiguous
    out = check_matrix(view, 3)
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(out, view)


def test_matrix_wrong_dim() -> None:
    with pytest.raises(DimensionMismatch, match="dimension 4.*dim=3"):
        check_matrix(np.zeros((2, 4)), 3)
    with pytest.raises(DimensionMismatch):
        check_matrix([[1.0, 2.0]], 3)
    with pytest.raises(DimensionMismatch):
        check_matrix([1.0, 2.0], 3, allow_1d=True)


def test_dimension_mismatch_is_invalid_input() -> None:
    with pytest.raises(InvalidInput):
        check_matrix(np.zeros((1, 2)), 3)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_matrix_non_finite(value: float) -> None:
    data = np.ones((3, 4), dtype=np.float32)
    data[2, 1] = value
    with pytest.raises(InvalidInput, match=r"embeddings\[2\]") as info:
        check_matrix(data, 4)
    assert not isinstance(info.value, DimensionMismatch)


def test_matrix_float64_beyond_float32_range_rejected() -> None:
    with pytest.raises(InvalidInput, match="float32"):
        check_matrix(np.array([[1.0, 1e39]]), 2)


def test_matrix_what_names_the_argument() -> None:
    with pytest.raises(InvalidInput, match="query_embeddings"):
        check_matrix([[np.nan]], 1, what="query_embeddings")


@pytest.mark.parametrize(
    "data",
    [
        [["1", "2"]],
        [[1.0, "x"]],
        np.array([[1, 2]], dtype=object),
        [[1.0, None]],
        None,
        "1,2",
        b"\x00\x00",
        np.array([[True, False]]),
        np.array([[1 + 1j, 2]]),
        [[{"a": 1}, 2]],
        {"a": [1, 2]},
    ],
)
def test_matrix_non_numeric(data: object) -> None:
    with pytest.raises(InvalidInput):
        check_matrix(data, 2)


def test_matrix_ragged() -> None:
    with pytest.raises(InvalidInput, match="rectangular|numeric"):
        check_matrix([[1.0, 2.0], [3.0]], 2)
    with pytest.raises(InvalidInput):
        check_matrix([[1.0, 2.0], [3.0, 4.0, 5.0]], 2)


@pytest.mark.parametrize("data", [np.zeros((0, 3)), [], np.zeros((0,))])
def test_matrix_empty(data: object) -> None:
    with pytest.raises(InvalidInput):
        check_matrix(data, 3)


def test_matrix_3d_and_0d() -> None:
    with pytest.raises(InvalidInput, match="2-D"):
        check_matrix(np.zeros((2, 3, 3)), 3)
    with pytest.raises(InvalidInput, match="2-D"):
        check_matrix(np.zeros((2, 3, 3)), 3, allow_1d=True)
    with pytest.raises(InvalidInput):
        check_matrix(np.float32(1.0), 1)
    with pytest.raises(InvalidInput):
        check_matrix(3.0, 1, allow_1d=True)


def test_matrix_1d_only_with_allow_1d() -> None:
    with pytest.raises(InvalidInput, match="2-D"):
        check_matrix([1.0, 2.0, 3.0], 3)
    out = check_matrix([1.0, 2.0, 3.0], 3, allow_1d=True)
    assert out.shape == (1, 3)
    np.testing.assert_array_equal(out[0], [1, 2, 3])


def test_matrix_returns_float32_copy_values() -> None:
    rng = np.random.default_rng(1)
    data = rng.normal(size=(5, 7))
    out = check_matrix(data, 7)
    np.testing.assert_array_equal(out, data.astype(np.float32))


# --- normalise ---------------------------------------------------------------------------------------------


def test_normalise_unit_rows() -> None:
    rng = np.random.default_rng(2)
    m = rng.normal(size=(20, 16)).astype(np.float32) * rng.uniform(0.01, 100, size=(20, 1)).astype(np.float32)
    out = normalise(m)
    assert out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out.astype(np.float64), axis=1), 1.0, rtol=1e-6)
    # direction kept: each row is a positive multiple of the input row
    cos = (out.astype(np.float64) * m).sum(1) / np.linalg.norm(m.astype(np.float64), axis=1)
    np.testing.assert_allclose(cos, 1.0, rtol=1e-6)


def test_normalise_zero_row_rejected() -> None:
    m = np.ones((3, 4), dtype=np.float32)
    m[1] = 0
    with pytest.raises(InvalidInput, match=r"embeddings\[1\].*zero"):
        normalise(m)
    with pytest.raises(InvalidInput, match=r"query_embeddings\[0\]"):
        normalise(np.zeros((1, 4), dtype=np.float32), what="query_embeddings")


def test_normalise_large_and_tiny_values() -> None:
    # squares overflow / underflow float32; the result must still be a unit vector in the same direction
    m = np.array([[3e30, 4e30, 0.0], [3e-30, 0.0, 4e-30]], dtype=np.float32)
    out = normalise(m)
    np.testing.assert_allclose(out, [[0.6, 0.8, 0.0], [0.6, 0.0, 0.8]], rtol=1e-6)


def test_normalise_does_not_mutate_input() -> None:
    m = np.array([[3.0, 4.0]], dtype=np.float32)
    normalise(m)
    np.testing.assert_array_equal(m, [[3.0, 4.0]])


# --- encode / decode ---------------------------------------------------------------------------------------


def test_encode_float32_little_endian_byte_exact() -> None:
    m = np.array([[1.0, -2.5, 3.25], [0.1, 1e-3, -0.0]], dtype=np.float32)
    blobs = encode_vectors(m, "float32")
    assert len(blobs) == 2
    assert blobs[0] == struct.pack("<3f", 1.0, -2.5, 3.25)
    assert blobs[1] == struct.pack("<3f", *[float(x) for x in m[1]])
    assert all(len(b) == 12 for b in blobs)


def test_encode_float16_little_endian_byte_exact() -> None:
    m = np.array([[1.0, -2.5, 65504.0, 0.5]], dtype=np.float32)
    (blob,) = encode_vectors(m, "float16")
    assert blob == struct.pack("<4e", 1.0, -2.5, 65504.0, 0.5)
    assert len(blob) == 8


def test_encode_big_endian_input_still_little_endian_output() -> None:
    m = np.array([[1.0, 2.0]], dtype=">f4")
    assert encode_vectors(m, "float32")[0] == struct.pack("<2f", 1.0, 2.0)


def test_round_trip_float32_exact() -> None:
    rng = np.random.default_rng(3)
    m = rng.normal(size=(50, 33)).astype(np.float32)
    back = decode_vectors(encode_vectors(m, "float32"), 33, "float32")
    assert back.dtype == np.float32 and back.shape == (50, 33)
    np.testing.assert_array_equal(back, m)


def test_round_trip_float16() -> None:
    rng = np.random.default_rng(4)
    m = rng.normal(size=(40, 24)).astype(np.float32)
    back = decode_vectors(encode_vectors(m, "float16"), 24, "float16")
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, m.astype(np.float16).astype(np.float32))
    # float16 keeps ~3 decimal digits
    np.testing.assert_allclose(back, m, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("value", [65520.0, 1e5, -7e4])
def test_float16_overflow_rejected(value: float) -> None:
    m = np.array([[1.0, value]], dtype=np.float32)
    with pytest.raises(InvalidInput, match="float16"):
        encode_vectors(m, "float16")
    # the same values are fine in float32
    assert len(encode_vectors(m, "float32")) == 1


def test_decode_empty() -> None:
    out = decode_vectors([], 5, "float32")
    assert out.shape == (0, 5) and out.dtype == np.float32


# --- metadatas ---------------------------------------------------------------------------------------------


def test_metadatas_none_means_none_each() -> None:
    assert check_metadatas(None, 3) == [None, None, None]


def test_metadatas_to_compact_json() -> None:
    out = check_metadatas([{"genre": "drama", "year": 1994, "tags": ["a", "b"]}, None, {"t": "é"}], 3)
    assert out[1] is None
    assert json.loads(out[0]) == {"genre": "drama", "year": 1994, "tags": ["a", "b"]}
    assert " " not in out[0]
    assert out[2] == '{"t":"é"}'


def test_metadatas_wrong_length() -> None:
    with pytest.raises(InvalidInput, match="2 metadatas for 3 ids"):
        check_metadatas([{}, {}], 3)
    with pytest.raises(InvalidInput):
        check_metadatas([{}, {}, {}, {}], 3)


def test_metadatas_single_dict_rejected() -> None:
    with pytest.raises(InvalidInput, match="single dict"):
        check_metadatas({"a": 1}, 1)


@pytest.mark.parametrize("bad", ["x", 5, {"a"}, np.array([{}])])
def test_metadatas_not_a_list(bad: object) -> None:
    with pytest.raises(InvalidInput):
        check_metadatas(bad, 1)


@pytest.mark.parametrize("item", [[("a", 1)], "a=1", 5, ["a"]])
def test_metadatas_non_dict_item(item: object) -> None:
    with pytest.raises(InvalidInput, match=r"metadatas\[1\]"):
        check_metadatas([{}, item], 2)


@pytest.mark.parametrize(
    "value",
    [
        {1, 2},
        object(),
        b"bytes",
        np.float32(1.0),
        float("nan"),
        float("inf"),
        [1.0, float("-inf")],
        {"nested": float("nan")},
    ],
)
def test_metadatas_non_json_values(value: object) -> None:
    with pytest.raises(InvalidInput, match=r"metadatas\[0\]"):
        check_metadatas([{"k": value}], 1)


@pytest.mark.parametrize("key", ["$and", "$x", "", 1, None, ("a",)])
def test_metadatas_bad_keys(key: object) -> None:
    with pytest.raises(InvalidInput, match="invalid key"):
        check_metadatas([{key: 1}], 1)


def test_metadatas_dollar_inside_key_allowed() -> None:
    assert check_metadatas([{"price$": 1}], 1) == ['{"price$":1}']


def test_metadatas_size_limit() -> None:
    overhead = len('{"k":""}')
    ok = {"k": "x" * (MAX_METADATA_BYTES - overhead)}
    assert len(check_metadatas([ok], 1)[0].encode()) == MAX_METADATA_BYTES  # type: ignore[union-attr]
    with pytest.raises(InvalidInput, match="larger"):
        check_metadatas([{"k": "x" * (MAX_METADATA_BYTES - overhead + 1)}], 1)
    # the limit is in UTF-8 bytes: 2-byte characters count twice
    with pytest.raises(InvalidInput, match="larger"):
        check_metadatas([{"k": "é" * (MAX_METADATA_BYTES // 2)}], 1)


def test_metadatas_lone_surrogate_rejected() -> None:
    with pytest.raises(InvalidInput, match=r"metadatas\[0\]"):
        check_metadatas([{"k": "a\ud800"}], 1)


def test_metadatas_circular_and_deep_rejected() -> None:
    loop: dict = {}
    loop["self"] = loop
    with pytest.raises(InvalidInput):
        check_metadatas([{"a": loop}], 1)
    deep: list = []
    cur = deep
    for _ in range(100_000):
        cur.append([])
        cur = cur[0]
    with pytest.raises(InvalidInput):
        check_metadatas([{"a": deep}], 1)


# --- n_results ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 10, 10_000, np.int64(5), np.int32(3)])
def test_n_results_ok(n: object) -> None:
    out = check_n_results(n)
    assert out == int(n) and type(out) is int  # type: ignore[call-overload]


@pytest.mark.parametrize("n", [0, -1, 10_001, 1.0, 2.5, "3", None, True, False, [3]])
def test_n_results_bad(n: object) -> None:
    with pytest.raises(InvalidInput, match="n_results"):
        check_n_results(n)


# --- space parameters --------------------------------------------------------------------------------------


def test_space_params_ok() -> None:
    out = check_space_params(64, "cosine", "float32", 16, 200, 64)
    assert out == {"dim": 64, "metric": "cosine", "dtype": "float32", "M": 16, "ef_construction": 200, "ef": 64,
                   "neighbours": 0}
    out = check_space_params(np.int64(3), "l2", "float16", 2, 1, 1)
    assert out["dim"] == 3 and type(out["dim"]) is int and out["dtype"] == "float16"
    assert check_space_params(65536, "ip", "float32", 128, 10_000, 10_000)["dim"] == 65536


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((0, "l2", "float32", 16, 200, 64), "dim"),
        ((65537, "l2", "float32", 16, 200, 64), "dim"),
        ((3.0, "l2", "float32", 16, 200, 64), "dim"),
        (("3", "l2", "float32", 16, 200, 64), "dim"),
        ((True, "l2", "float32", 16, 200, 64), "dim"),
        ((None, "l2", "float32", 16, 200, 64), "dim"),
        ((3, "euclidean", "float32", 16, 200, 64), "metric"),
        ((3, "L2", "float32", 16, 200, 64), "metric"),
        ((3, None, "float32", 16, 200, 64), "metric"),
        ((3, ["l2"], "float32", 16, 200, 64), "metric"),
        ((3, "l2", "float64", 16, 200, 64), "dtype"),
        ((3, "l2", np.float32, 16, 200, 64), "dtype"),
        ((3, "l2", ["float32"], 16, 200, 64), "dtype"),
        ((3, "l2", {"float32": 1}, 16, 200, 64), "dtype"),
        ((3, "l2", "float32", 1, 200, 64), "M"),
        ((3, "l2", "float32", 129, 200, 64), "M"),
        ((3, "l2", "float32", 16, 0, 64), "ef_construction"),
        ((3, "l2", "float32", 16, 10_001, 64), "ef_construction"),
        ((3, "l2", "float32", 16, 200, 0), "ef"),
        ((3, "l2", "float32", 16, 200, 64.0), "ef"),
    ],
)
def test_space_params_bad(args: tuple, match: str) -> None:
    with pytest.raises(InvalidInput, match=match):
        check_space_params(*args)
