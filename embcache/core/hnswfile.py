"""Reading the vectors out of an hnswlib index file (hnswlib 0.8's ``saveIndex`` layout). Pure, no I/O.

hnswlib's Python ``get_items`` costs ~13-30 us per row, far too much for an exact scan over a few thousand
matching rows, so a loaded snapshot keeps its own float16 copy of the vectors, read here from the very file
hnswlib loads (no second download, no ``get_items``). The file starts with a fixed header, then the level-0
block: ``cur_element_count`` elements of ``size_data_per_element`` bytes each, the vector at ``offsetData``
and the label (uint64) at ``label_offset`` of each element.
"""

from __future__ import annotations

import struct

import numpy as np

__all__ = ["HEADER", "level0_vectors"]

# offsetLevel0, max_elements, cur_element_count, size_data_per_element, label_offset, offsetData (size_t),
# maxlevel (int), enterpoint_node (uint32), maxM, maxM0, M (size_t), mult (double), ef_construction (size_t)
HEADER = struct.Struct("<6Qii3QdQ")


def level0_vectors(data: bytes | bytearray | memoryview, dim: int, n_slots: int,
                   dtype: type = np.float16) -> np.ndarray:
    """The index's vectors as ``(n_slots, dim)`` in ``dtype``, row = label (zeros where no element has it).

    Raises ValueError when the bytes do not look like an index of ``dim`` float32 vectors."""
    if len(data) < HEADER.size:
        raise ValueError("index file shorter than its header")
    _, _, count, size, label_off, data_off, *_ = HEADER.unpack_from(data, 0)
    end = HEADER.size + count * size
    if size <= 0 or data_off + 4 * dim > size or label_off + 8 > size or end > len(data):
        raise ValueError("index file header does not match its size")
    block = np.frombuffer(data, dtype=np.uint8, count=count * size, offset=HEADER.size).reshape(count, size)
    labels = block[:, label_off : label_off + 8].copy().view("<u8").ravel()
    if count and int(labels.max()) >= n_slots:
        raise ValueError("index file holds a label beyond the snapshot's label table")
    out: np.ndarray = np.zeros((n_slots, dim), dtype=dtype)
    vecs = block[:, data_off : data_off + 4 * dim].copy().view("<f4")
    out[labels.astype(np.int64)] = vecs
    return out
