"""Reading the vectors out of an hnswlib index file (hnswlib 0.8's ``saveIndex`` layout). Pure, no I/O.

hnswlib's Python ``get_items`` costs ~13-30 us per row, far too much for an exact scan over a few thousand
matching rows, so a loaded snapshot keeps its own float16 copy of the vectors, read here from the very file
hnswlib loads (no second download, no ``get_items``). The file starts with a fixed header, then the level-0
block: ``cur_element_count`` elements of ``size_data_per_element`` bytes each, the vector at ``offsetData``
and the label (uint64) at ``label_offset`` of each element.
"""

from __future__ import annotations

import bisect
import math
import os
import struct
from typing import Any

import numpy as np

__all__ = ["HEADER", "CPUS", "index_params", "level0_layout", "level0_copy", "level0_vectors", "index_vectors"]

# threads for a batch of queries: the CPUs this process may run on. An index loaded from the state built here
# takes it as its default (with -1 there a batch ran at half the speed of hnswlib's own index: BENCHMARKS.md,
# "Query engine", routes and planner), and the bases pass it explicitly.
CPUS = max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))

# offsetLevel0, max_elements, cur_element_count, size_data_per_element, label_offset, offsetData (size_t),
# maxlevel (int), enterpoint_node (uint32), maxM, maxM0, M (size_t), mult (double), ef_construction (size_t)
HEADER = struct.Struct("<6Qii3QdQ")


def level0_layout(data: bytes | bytearray | memoryview, dim: int,
                  n_slots: int) -> tuple[np.ndarray, np.ndarray, int]:
    """``(block, labels, offset)``: the level-0 block as ``(count, size_data_per_element)`` bytes (a view of
    ``data``), each element's label, and where its vector starts. Cheap (only the labels are copied); raises
    ValueError when the bytes do not look like an index of ``dim`` float32 vectors whose labels fit ``n_slots``."""
    if len(data) < HEADER.size:
        raise ValueError("index file shorter than its header")
    _, _, count, size, label_off, data_off, *_ = HEADER.unpack_from(data, 0)
    end = HEADER.size + count * size
    if size <= 0 or data_off + 4 * dim > size or label_off + 8 > size or end > len(data):
        raise ValueError("index file header does not match its size")
    block = np.frombuffer(data, dtype=np.uint8, count=count * size, offset=HEADER.size).reshape(count, size)
    return block, _live_labels(block, label_off, n_slots), int(data_off)


DELETE_MARK = 0x01  # hnswlib marks a deleted element in the third byte of its level-0 link header


def _live_labels(block: np.ndarray, label_off: int, n_slots: int) -> np.ndarray:
    """Each element's label (int64), -1 for a deleted one. A deleted element keeps its slot and label in level 0
    (a worker's tombstone), and its label may lie beyond the table (the item with the highest label was deleted):
    that is fine, hnswlib never returns it. A live label beyond the table is refused (ValueError)."""
    raw = block[:, label_off : label_off + 8].copy().view("<u8").ravel()
    deleted = (block[:, 2] & DELETE_MARK) != 0
    if bool((raw[~deleted] >= n_slots).any()):
        raise ValueError("index file holds a label beyond the snapshot's label table")
    labels = np.where(deleted, 0, raw).astype(np.int64)
    labels[deleted] = -1
    return labels


def level0_copy(block: np.ndarray, labels: np.ndarray, offset: int, dim: int, n_slots: int,
                dtype: type = np.float16) -> np.ndarray:
    """The vectors of a :func:`level0_layout` as ``(n_slots, dim)`` in ``dtype``, row = label (zeros where no
    live element has it; ``labels`` -1 for a deleted one). The slow part (a float16 cast of every value): readers
    run it beside their first queries, or on their first exact scan."""
    out: np.ndarray = np.zeros((n_slots, dim), dtype=dtype)
    rows = labels.astype(np.int64)
    step = 4096  # a block of rows at a time: no full float32 temporary (the cast reads hnswlib's rows in place)
    for i in range(0, len(block), step):
        part = block[i : i + step, offset : offset + 4 * dim]
        if part.strides[0] % 4 or part.ctypes.data % 4:  # a float32 view needs 4-byte alignment
            part = part.copy()
        live = rows[i : i + step] >= 0
        out[rows[i : i + step][live]] = part.view("<f4")[live]
    return out


def level0_vectors(data: bytes | bytearray | memoryview, dim: int, n_slots: int,
                   dtype: type = np.float16) -> np.ndarray:
    """The index's vectors as ``(n_slots, dim)`` in ``dtype``, row = label (zeros where no element has it).

    Raises ValueError when the bytes do not look like an index of ``dim`` float32 vectors."""
    block, labels, offset = level0_layout(data, dim, n_slots)
    return level0_copy(block, labels, offset, dim, n_slots, dtype)


def index_vectors(index: Any, dim: int, n_slots: int, dtype: type = np.float16) -> np.ndarray:
    """The vectors of a loaded ``hnswlib.Index`` as ``(n_slots, dim)`` in ``dtype``, row = label, read from
    hnswlib's own level-0 memory (its ``__getstate__``: one copy of it, held for the cast, and the GIL for that
    copy). Raises ValueError when its layout is not one of ``dim`` float32 vectors whose labels fit ``n_slots``."""
    state = index.__getstate__()
    params = state[0] if isinstance(state, tuple) else state
    count, size = int(params["cur_element_count"]), int(params["size_data_per_element"])
    label_off, data_off = int(params["label_offset"]), int(params["offset_data"])
    data = np.asarray(params["data_level0"]).view(np.uint8).reshape(-1)
    del state, params
    if label_off != data_off + 4 * dim or size != label_off + 8 or count * size > len(data):
        raise ValueError("the index's level 0 does not hold vectors of this dimension")
    block = data[: count * size].reshape(count, size)
    return level0_copy(block, _live_labels(block, label_off, n_slots), data_off, dim, n_slots, dtype)


def index_params(data: bytes | bytearray | memoryview, metric: str, dim: int, *, max_elements: int = 0,
                 allow_replace_deleted: bool = False) -> dict[str, object]:
    """What ``hnswlib.Index(params)`` builds an index from (the dict of hnswlib's own ``__getstate__``), read
    from an index file in memory and checked so that hnswlib cannot read out of bounds, however the bytes were
    made: the layout against ``dim``, the file's exact length, every element's link records, every neighbour id
    (level 0 and above) against the element count, the entry point and the levels. Views of ``data`` are used,
    not copies: hnswlib copies what it keeps. Raises ValueError."""
    if len(data) < HEADER.size:
        raise ValueError("index file shorter than its header")
    (offset0, _, count, size, label_off, data_off, max_level, entry, max_m, max_m0, m, mult,
     ef_construction) = HEADER.unpack_from(data, 0)
    links0 = max_m0 * 4 + 4
    if (offset0 != 0 or not 1 <= m <= 4096 or max_m != m or max_m0 != 2 * m or data_off != links0
            or label_off != links0 + 4 * dim or size != label_off + 8 or not math.isfinite(mult)):
        raise ValueError(f"index header does not describe an index of dim {dim}")
    end0 = HEADER.size + count * size
    if end0 > len(data) or (len(data) - end0) % 4 or count >= 1 << 32:
        raise ValueError("index file shorter than its elements")
    block = np.frombuffer(data, dtype=np.uint8, count=count * size, offset=HEADER.size).reshape(count, size)
    # level 0: each element's link count (the low 16 bits of its first word) and neighbour ids
    links = block[:, :links0].copy().view("<u4")  # per element: [count | flags, ids...]
    n0 = links[:, :1] & 0xFFFF
    if count and (int(n0.max()) > max_m0 or not bool(
            ((links[:, 1:] < count) | (np.arange(max_m0)[None, :] >= n0)).all())):
        raise ValueError("a level-0 link list is too long or names an element that does not exist")
    del links
    # the upper levels: per element a uint32 byte size, then that many bytes of (maxM + 1)-word link lists. Most
    # elements have none (a zero word each): walk only the elements that have some, found by the next non-zero
    # word after a run of empty records
    words = np.frombuffer(data, dtype="<u4", offset=end0, count=(len(data) - end0) // 4)
    per_level = (max_m + 1) * 4
    nonzero = np.flatnonzero(words).tolist()
    elems: list[int] = []  # the elements with upper levels, where their lists start, and their length in words
    starts: list[int] = []
    lengths: list[int] = []
    at = elem = k = 0
    top, total = max(max_level, 0), len(words)
    while elem < count:
        k = bisect.bisect_left(nonzero, at, k)
        nxt = nonzero[k] if k < len(nonzero) else total
        if elem + (nxt - at) >= count:  # the remaining elements have no upper levels
            at += count - elem
            break
        elem += nxt - at
        if nxt >= total:
            raise ValueError("index file ends inside its link lists")
        n = int(words[nxt])
        if n % per_level or n // per_level > top or nxt + 1 + n // 4 > total:
            raise ValueError(f"element {elem} has a link list of {n} bytes")
        elems.append(elem)
        starts.append(nxt + 1)
        lengths.append(n // 4)
        at = nxt + 1 + n // 4
        elem += 1
    if at != total:
        raise ValueError("index file length does not match its link lists")
    levels = np.zeros(max(count, max_elements, 1), dtype=np.int32)
    lens = np.asarray(lengths, dtype=np.int64)
    levels[np.asarray(elems, dtype=np.int64)] = lens * 4 // per_level
    shift = np.asarray(starts, dtype=np.int64) - np.concatenate(([0], np.cumsum(lens)[:-1]))
    upper = words[np.arange(int(lens.sum()), dtype=np.int64) + np.repeat(shift, lens)]
    lists = upper.reshape(-1, max_m + 1)
    if len(lists) and (int((lists[:, 0] & 0xFFFF).max()) > max_m or not bool(
            ((lists[:, 1:] < count) | (np.arange(max_m)[None, :] >= (lists[:, :1] & 0xFFFF))).all())):
        raise ValueError("an upper-level link list is too long or names an element that does not exist")
    if count and not (0 <= entry < count and 0 <= max_level == int(levels[entry])):
        raise ValueError("the entry point is not an element of the top level")
    if count and int(levels[:count].max()) != max_level:
        raise ValueError("the levels disagree with the header's top level")
    labels = block[:, label_off : label_off + 8].copy().view("<u8").ravel()
    return {
        "ser_version": 1, "space": metric, "dim": dim, "index_inited": True, "ep_added": count > 0,
        "normalize": metric == "cosine", "num_threads": CPUS, "seed": 100, "offset_level0": 0,
        "max_elements": max(count, max_elements, 1), "cur_element_count": count, "size_data_per_element": size,
        "label_offset": label_off, "offset_data": data_off, "max_level": max_level if count else -1,
        "enterpoint_node": entry if count else 0xFFFFFFFF, "max_M": max_m, "max_M0": max_m0, "M": m, "mult": mult,
        "ef_construction": ef_construction, "ef": 10, "has_deletions": True, "size_links_per_element": per_level,
        "allow_replace_deleted": allow_replace_deleted, "label_lookup_external": labels,
        "label_lookup_internal": np.arange(count, dtype=np.uint32), "element_levels": levels,
        "data_level0": block.reshape(-1).view(np.int8), "link_lists": upper.view(np.int8),
    }
