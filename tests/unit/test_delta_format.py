"""The delta segment format (embcache.core.delta): a round trip of a log tail, and every way a chain or a
segment written by a hostile worker principal is refused before a byte of it is used."""

from __future__ import annotations

import json

import numpy as np
import pytest

from embcache.core.delta import MAX_SEGMENTS, Chain, pack_segment, unpack_segment
from embcache.core.errors import SnapshotCorrupt

DIM = 4
WIDTH = 4 * DIM


def _vec(x: float) -> bytes:
    return np.full(DIM, x, dtype="<f4").tobytes()


def _segment(start: str = "1-0", pos: str = "5-0"):  # noqa: ANN202
    ids = ["a", "b", "c", "é"]
    vectors = [_vec(1), None, _vec(3), b"short"]  # b deleted; é stored corrupt: written as a deletion
    metas = [b'{"g":1}', None, None, b'{"t":"x"}']
    return pack_segment(3, start, pos, ids, vectors, metas, WIDTH)


def test_a_tail_round_trips() -> None:
    chunks, seg = _segment()
    ids, vectors, metas = unpack_segment(seg, chunks, WIDTH)
    assert ids == ["a", "b", "c", "é"]
    assert vectors == [_vec(1), None, _vec(3), None]
    assert metas == [b'{"g":1}', None, None, b'{"t":"x"}']
    assert seg.sid.startswith("3.") and (seg.start, seg.pos, seg.rows) == ("1-0", "5-0", 4)
    chain = Chain("3.ab12", "1-0").extended(seg)
    again = Chain.from_json(chain.to_json(), WIDTH)
    assert again == chain and again.pos == "5-0" and again.rows == 4


def test_an_empty_tail_is_a_segment_too() -> None:  # the log moved with no net change
    chunks, seg = pack_segment(1, "1-0", "2-0", [], [], [], WIDTH)
    assert unpack_segment(seg, chunks, WIDTH) == ([], [], [])


def test_a_changed_byte_is_refused() -> None:
    chunks, seg = _segment()
    bad = bytearray(chunks[0])
    bad[-1] ^= 1
    with pytest.raises(SnapshotCorrupt, match="checksum"):
        unpack_segment(seg, [bytes(bad)], WIDTH)
    with pytest.raises(SnapshotCorrupt):
        unpack_segment(seg, [chunks[0][:-1]], WIDTH)


def _forged(ids: object, kinds: bytes, vectors: bytes, lengths: list[int], metas: bytes):  # noqa: ANN202
    """A segment whose checksum matches its (hostile) content: what a forging worker principal can publish."""
    from hashlib import sha256

    from embcache.core.delta import Segment

    sections = [json.dumps(ids).encode(), kinds, vectors, np.array(lengths, dtype="<i8").tobytes(), metas]
    blob = b"".join(sections)
    rows = len(kinds)
    seg = Segment("1.ab", "1-0", "2-0", rows, tuple(len(s) for s in sections), sha256(blob).hexdigest())  # type: ignore[arg-type]
    return [blob], seg


@pytest.mark.parametrize("case", ["ids not a list", "ids not strings", "duplicate ids", "kind 2",
                                  "vectors short", "metadata lengths", "negative length"])
def test_forged_segments_are_refused(case: str) -> None:
    ids: object = ["a", "b"]
    kinds, vectors, lengths, metas = b"\x01\x00", _vec(1), [2, -1], b"{}"
    if case == "ids not a list":
        ids = {"a": 1, "b": 2}
    elif case == "ids not strings":
        ids = ["a", 2]
    elif case == "duplicate ids":
        ids = ["a", "a"]
    elif case == "kind 2":
        kinds = b"\x01\x02"
    elif case == "vectors short":
        kinds = b"\x01\x01"
    elif case == "metadata lengths":
        lengths = [5, -1]
    elif case == "negative length":
        lengths = [-7, 9]
        metas = b"{}" + b" " * 7
    chunks, seg = _forged(ids, kinds, vectors, lengths, metas)
    with pytest.raises(SnapshotCorrupt):
        unpack_segment(seg, chunks, WIDTH)


def _chain_json(**change: object) -> str:
    _, s1 = _segment("1-0", "5-0")
    _, s2 = _segment("5-0", "9-0")
    d = json.loads(Chain("3.ab12", "1-0", (s1, s2)).to_json())
    d.update(change)
    return json.dumps(d)


def test_a_chain_must_follow_on_from_its_start() -> None:
    assert Chain.from_json(_chain_json(), WIDTH).pos == "9-0"
    d = json.loads(_chain_json())
    d["segments"][1]["start"] = "6-0"  # a gap: the rows of (5-0, 6-0] would be missed
    with pytest.raises(SnapshotCorrupt, match="starts at"):
        Chain.from_json(json.dumps(d), WIDTH)
    d = json.loads(_chain_json())
    d["segments"][0]["pos"] = "0-5"  # ends before it starts
    with pytest.raises(SnapshotCorrupt):
        Chain.from_json(json.dumps(d), WIDTH)


@pytest.mark.parametrize("change", [{"base": "x"}, {"base": 3}, {"start": "one"}, {"extra": 1},
                                    {"segments": {}}, {"segments": [{}]}, {"segments": [1]}])
def test_malformed_chains_are_refused(change: dict[str, object]) -> None:
    with pytest.raises(SnapshotCorrupt):
        Chain.from_json(_chain_json(**change), WIDTH)


@pytest.mark.parametrize("field,value", [("rows", -1), ("rows", 1 << 30), ("rows", 1.5), ("sizes", [1, 2]),
                                         ("sizes", [10, 4, 17, 32, 0]), ("sha256", "00"), ("sid", "x.y")])
def test_segment_fields_are_bounded(field: str, value: object) -> None:
    d = json.loads(_chain_json())
    d["segments"][0][field] = value
    with pytest.raises(SnapshotCorrupt):
        Chain.from_json(json.dumps(d), WIDTH)


def test_a_chain_is_bounded_in_segments_and_bytes() -> None:
    _, s = _segment("1-0", "2-0")
    d = json.loads(Chain("3.ab12", "1-0").to_json())
    at = 1
    for _ in range(MAX_SEGMENTS + 1):
        seg = s.as_dict()
        seg.update(start=f"{at}-0", pos=f"{at + 1}-0")
        d["segments"].append(seg)
        at += 1
    with pytest.raises(SnapshotCorrupt):
        Chain.from_json(json.dumps(d), WIDTH)
    with pytest.raises(SnapshotCorrupt, match="too long"):
        Chain.from_json(b" " * 100_000, WIDTH)
