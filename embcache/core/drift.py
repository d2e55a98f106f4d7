"""How much two versions of a space differ: the statistics of :meth:`embcache.Space.compare`. Pure numpy.

Neighbour overlap@k of an item is ``|N_a(i) & N_b(i)| / k``: the share of its ``k`` nearest neighbours in version
``a`` (the item itself left out, over all of ``a``'s items) that are also among its ``k`` nearest in ``b``. It is
what "similar items" users would see change: 1 means the same neighbours, 0 none in common. Items added or
removed between the versions count as change when they enter or leave a neighbourhood. ``drift = 1 - mean
overlap@k``; :meth:`embcache.Space.promote` refuses a promotion whose drift passes ``max_drift``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["DriftReport", "QUANTILES", "MOST_CHANGED", "EXAMPLES", "overlaps", "drift_report"]

QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
MOST_CHANGED = 10  # ids reported with the lowest overlap
EXAMPLES = 10  # ids reported of those only in a / only in b


@dataclass(frozen=True)
class DriftReport:
    """What :meth:`embcache.Space.compare` found between versions ``a`` and ``b`` (a frozen value).

    ``only_in_a`` / ``only_in_b`` / ``in_both`` count ids (``*_examples``: up to 10 of them, sorted).
    ``sampled`` shared items (chosen with ``seed``) had their ``k`` nearest neighbours searched in both versions:
    ``overlap_mean`` is their mean overlap@k, ``overlap_quantiles`` maps a quantile (0, 0.1, ..., 1) to its
    overlap, ``overlap_histogram[j]`` counts the items that kept ``j`` of their ``k`` neighbours.
    ``norm_mean_a``/``norm_mean_b`` are the mean vector norms of the sampled items, ``norm_shift`` the mean of
    ``| |b_i| - |a_i| |`` (0 in ``cosine`` spaces, which store unit vectors); ``centroid_shift`` is
    ``|mean(b_i) - mean(a_i)|`` over the sample and ``centroid_cosine`` the cosine of the two means.
    ``most_changed`` lists up to 10 ``(id, overlap)`` of the sample with the lowest overlap (then by id).
    :attr:`drift` is ``1 - overlap_mean``.
    """

    space: str
    a: str
    b: str
    k: int
    only_in_a: int
    only_in_b: int
    in_both: int
    only_in_a_examples: tuple[str, ...]
    only_in_b_examples: tuple[str, ...]
    sampled: int
    seed: int
    overlap_mean: float
    overlap_quantiles: tuple[tuple[float, float], ...]
    overlap_histogram: tuple[int, ...]
    norm_mean_a: float
    norm_mean_b: float
    norm_shift: float
    centroid_shift: float
    centroid_cosine: float
    most_changed: tuple[tuple[str, float], ...]
    seconds: float

    @property
    def drift(self) -> float:
        """``1 - overlap_mean``: 0 when every sampled item kept its neighbours, 1 when none did."""
        return 1.0 - self.overlap_mean

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready types (``drift`` included; quantiles as ``{"p10": ...}``)."""
        d = asdict(self)
        d["overlap_quantiles"] = {f"p{round(q * 100)}": v for q, v in self.overlap_quantiles}
        d["overlap_histogram"] = list(self.overlap_histogram)
        d["most_changed"] = [{"id": i, "overlap": o} for i, o in self.most_changed]
        d["only_in_a_examples"] = list(self.only_in_a_examples)
        d["only_in_b_examples"] = list(self.only_in_b_examples)
        d["drift"] = self.drift
        return d

    def to_json(self) -> str:
        """:meth:`as_dict` as JSON text."""
        return json.dumps(self.as_dict(), indent=2)

    def __str__(self) -> str:
        q = dict(self.overlap_quantiles)
        bars = _bars(self.overlap_histogram)
        changed = ", ".join(f"{i} ({o:.1f})" for i, o in self.most_changed) or "-"
        return "\n".join([
            f"{self.space}: {self.a} -> {self.b}",
            f"  items: {self.in_both} in both, {self.only_in_a} only in {self.a}, {self.only_in_b} only in {self.b}",
            f"  neighbour overlap@{self.k} over {self.sampled} shared items: mean {self.overlap_mean:.3f} "
            f"(drift {self.drift:.3f}); p10 {q[0.1]:.2f}, median {q[0.5]:.2f}, p90 {q[0.9]:.2f}",
            *(f"    {j:>3}/{self.k} kept: {n:>6}  {bar}"
              for j, (n, bar) in enumerate(zip(self.overlap_histogram, bars))),
            f"  norms: mean {self.norm_mean_a:.4g} -> {self.norm_mean_b:.4g}, mean |change| {self.norm_shift:.4g}",
            f"  centroid: moved {self.centroid_shift:.4g}, cosine between them {self.centroid_cosine:.4f}",
            f"  most changed: {changed}",
            f"  ({self.seconds:.2f} s)",
        ])


def _bars(hist: Sequence[int], width: int = 40) -> list[str]:
    top = max(hist) if hist else 0
    return ["#" * (round(width * n / top) if top else 0) for n in hist]


def overlaps(own: Sequence[str], neighbours_a: Sequence[Sequence[str]], neighbours_b: Sequence[Sequence[str]],
             k: int) -> np.ndarray:
    """overlap@k of each item (float64): ``|N_a & N_b| / k``, with each list cut to ``k`` and the item itself
    left out (a version with fewer than ``k + 1`` items divides by the longer list instead)."""
    out = np.empty(len(own), dtype=np.float64)
    for j, (i, na, nb) in enumerate(zip(own, neighbours_a, neighbours_b, strict=True)):
        sa = [x for x in na if x != i][:k]
        sb = [x for x in nb if x != i][:k]
        out[j] = len(set(sa) & set(sb)) / max(1, min(k, max(len(sa), len(sb))))
    return out


def _norm_stats(va: np.ndarray, vb: np.ndarray) -> tuple[float, float, float, float, float]:
    a, b = va.astype(np.float64), vb.astype(np.float64)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    ca, cb = a.mean(axis=0), b.mean(axis=0)
    denom = float(np.linalg.norm(ca) * np.linalg.norm(cb))
    cos = float(ca @ cb / denom) if denom > 0 else 0.0
    return float(na.mean()), float(nb.mean()), float(np.abs(nb - na).mean()), float(np.linalg.norm(cb - ca)), cos


def drift_report(*, space: str, a: str, b: str, k: int, seed: int, only_a: Sequence[str], only_b: Sequence[str],
                 in_both: int, sample: Sequence[str], vectors_a: np.ndarray, vectors_b: np.ndarray,
                 overlap: np.ndarray, seconds: float) -> DriftReport:
    """Assemble a :class:`DriftReport` from what :meth:`embcache.Space.compare` gathered (``sample`` non-empty)."""
    counts = np.rint(overlap * k).astype(np.int64)
    hist = np.bincount(np.clip(counts, 0, k), minlength=k + 1)
    order = sorted(range(len(sample)), key=lambda j: (overlap[j], sample[j]))[:MOST_CHANGED]
    norm_a, norm_b, norm_shift, centroid_shift, centroid_cos = _norm_stats(vectors_a, vectors_b)
    return DriftReport(
        space=space, a=a, b=b, k=k,
        only_in_a=len(only_a), only_in_b=len(only_b), in_both=in_both,
        only_in_a_examples=tuple(sorted(only_a)[:EXAMPLES]), only_in_b_examples=tuple(sorted(only_b)[:EXAMPLES]),
        sampled=len(sample), seed=seed,
        overlap_mean=float(overlap.mean()),
        overlap_quantiles=tuple((q, float(np.quantile(overlap, q))) for q in QUANTILES),
        overlap_histogram=tuple(int(x) for x in hist),
        norm_mean_a=norm_a, norm_mean_b=norm_b, norm_shift=norm_shift,
        centroid_shift=centroid_shift, centroid_cosine=centroid_cos,
        most_changed=tuple((sample[j], float(overlap[j])) for j in order),
        seconds=round(seconds, 3),
    )
