"""The ``embcache`` command line, called through ``embcache.cli.main`` against a real Redis: the import/export
round trip of issue 5 on the shipped debian-minilm subset (with a real worker building the index), the rejected-row
summary and exit codes of ``import``, ``--json`` output of every read command, and the error messages."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import embcache
from embcache.cli import EXIT_REJECTED, main
from tests.datasets import MINILM_DIR, MiniLMSubset
from tests.workers_fixtures import WorkerPool, brute_force

BASE = MINILM_DIR / "base.f16.npy"


def cli(capsys: pytest.CaptureFixture[str], url: str, *argv: Any) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["--url", url, *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def cli_json(capsys: pytest.CaptureFixture[str], url: str, *argv: Any, code: int = 0) -> Any:
    """``embcache --json ...``: asserts the exit code and returns the parsed output."""
    got, out, err = cli(capsys, url, "--json", *argv)
    assert got == code, f"exit {got}, stderr:\n{err}\nstdout:\n{out}"
    return json.loads(out)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# the round trip of issue 5 --------------------------------------------------------------------------------
def test_round_trip_of_the_minilm_subset(redis_url: str, minilm_subset: MiniLMSubset, workers: WorkerPool,
                                         tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Import JSONL + .npy, build with a real worker, query by id, export: the export equals the import.

    The space is l2, so vectors are stored as given (float16 data, exact in float32) and compared exactly."""
    items = write_jsonl(tmp_path / "items.jsonl",
                        [{"id": i, **m} for i, m in zip(minilm_subset.ids, minilm_subset.metadatas)])
    cli_json(capsys, redis_url, "create-space", "debian", "--dim", 384, "--metric", "l2")
    summary = cli_json(capsys, redis_url, "import", "debian", "--vectors", BASE, "--items", items)
    assert summary["rows_read"] == summary["imported"] == 5000 and summary["rejected"] == 0
    assert summary["version"] == "v1" and summary["partitions"] == {"default": 5000}
    cli_json(capsys, redis_url, "alias", "debian", "live", "v1")

    workers.start(redis_url)
    built = cli_json(capsys, redis_url, "build", "debian", "--timeout", 120)
    assert built["version"] == "debian/v1" and built["partitions"] == 1
    stats = cli_json(capsys, redis_url, "stats", "debian")
    assert stats[0]["count"] == stats[0]["snapshot_count"] == 5000 and stats[0]["unindexed_entries"] == 0

    probes = [0, 1234, 4999]
    args = [a for i in probes for a in ("--id", minilm_subset.ids[i])]
    answers = cli_json(capsys, redis_url, "query", "debian", *args, "-n", 10, "--consistency", "eventual")
    truth = brute_force(minilm_subset.base, minilm_subset.base[probes], 11, metric="l2")
    row_of = {i: n for n, i in enumerate(minilm_subset.ids)}
    for probe, answer, exact in zip(probes, answers, truth):
        assert answer["query"] == minilm_subset.ids[probe]
        got = [r["id"] for r in answer["results"]]
        assert len(got) == 10 and minilm_subset.ids[probe] not in got  # query_by_id leaves the item itself out
        want = {minilm_subset.ids[j] for j in exact if j != probe}
        assert len(set(got) & want) >= 9  # HNSW recall on its own items
        for r in answer["results"]:
            assert r["metadata"] == minilm_subset.metadatas[row_of[r["id"]]]
            v = minilm_subset.base[row_of[r["id"]]] - minilm_subset.base[probe]
            assert r["distance"] == pytest.approx(float(v @ v), rel=1e-4)  # squared l2
    code, out, err = cli(capsys, redis_url, "query", "debian", "--id", minilm_subset.ids[0], "-n", 3)
    assert code == 0 and minilm_subset.ids[0] in out and "distance" in out  # the table

    exported = cli_json(capsys, redis_url, "export", "debian", "--out", tmp_path / "out")
    assert exported["items"] == 5000 and exported["files"] == [str(tmp_path / "out.npy"), str(tmp_path / "out.jsonl")]
    vectors = np.load(tmp_path / "out.npy")
    lines = read_jsonl(tmp_path / "out.jsonl")
    assert vectors.dtype == np.float32 and vectors.shape == (5000, 384) and len(lines) == 5000
    order = [row_of[line.pop("id")] for line in lines]
    assert sorted(order) == list(range(5000))
    np.testing.assert_array_equal(vectors, minilm_subset.base[order])
    assert all(line.pop("partition") == "default" for line in lines)
    assert lines == [minilm_subset.metadatas[r] for r in order]

    # and back in: exported files re-import as they are, into a new version, identical again
    again = cli_json(capsys, redis_url, "import", "debian", "--new-version", "--vectors", tmp_path / "out.npy",
                     "--items", tmp_path / "out.jsonl", "--partition-field", "partition")
    assert again["version"] == "v2" and again["imported"] == 5000
    cli_json(capsys, redis_url, "export", "debian", "--version", "v2", "--out", tmp_path / "again")
    np.testing.assert_array_equal(np.load(tmp_path / "again.npy"), vectors)
    assert (tmp_path / "again.jsonl").read_text() == (tmp_path / "out.jsonl").read_text()


def test_the_shipped_items_file_has_two_duplicate_package_names(redis_url: str, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """``items.jsonl`` keyed by package: the two repeated names are rejected as duplicates, the rest imported."""
    cli_json(capsys, redis_url, "create-space", "debian", "--dim", 384)
    code, out, err = cli(capsys, redis_url, "import", "debian", "--vectors", BASE, "--items",
                         MINILM_DIR / "items.jsonl", "--id-field", "package", "--rejects", tmp_path / "rejects.jsonl")
    assert code == EXIT_REJECTED, err
    assert "imported 4998 of 5000 rows into debian/v1" in out
    assert "rejected 2 rows" in out and "duplicate id" in out and "default-jdk-headless" in out
    rejects = read_jsonl(tmp_path / "rejects.jsonl")
    assert sorted(r["id"] for r in rejects) == ["default-jdk-headless", "default-jre-headless"]
    assert all(r["reasons"][0]["reason"] == "duplicate id" for r in rejects)
    with embcache.connect(redis_url) as hub:
        v = hub.space("debian").version("v1")
        assert v.count() == 4998
        first = json.loads((MINILM_DIR / "items.jsonl").read_text().splitlines()[0])
        got = v.get([first["package"]])
        assert got.metadatas == [{"row": first["row"], "section": first["section"], "short": first["short"]}]
        want = np.load(BASE)[0].astype(np.float32)
        np.testing.assert_allclose(got.embeddings[0], want / np.linalg.norm(want), rtol=0, atol=1e-6)  # cosine


# rejected rows, formats, dry runs, versions and partitions ------------------------------------------------
def _bad_rows() -> list[Any]:
    """14 rows: 6 good, 8 bad for different reasons (as JSONL lines)."""
    ok = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.0, 1.0, 1.0], [1.0, 0.0, 1.0]]
    return [
        {"id": "a", "embedding": ok[0], "genre": "x"},
        {"id": "b", "embedding": ok[1]},
        {"id": "c", "embedding": [1.0, 2.0], "genre": "x"},  # wrong dimension
        {"id": "d", "embedding": [1.0, float("nan"), 0.0]},  # NaN (json.dumps writes NaN, json.loads reads it)
        {"id": "", "embedding": ok[2]},  # empty id
        {"id": "x" * 600, "embedding": ok[2]},  # id over 512 bytes
        {"id": "e", "embedding": ok[2], "$bad": 1},  # metadata key starting with $
        {"id": "a", "embedding": ok[3]},  # duplicate of row 0
        {"id": "f", "embedding": [0.0, 0.0, 0.0]},  # zero vector in a cosine space
        "this line is not JSON",
        {"id": 7, "embedding": ok[3]},  # integer ids are fine
        {"id": "g", "embedding": ok[4], "nested": {"k": [1, 2]}},
        {"id": "h"},  # no vector
        {"id": "i", "embedding": ok[5], "genre": "y"},
    ]


def _write_bad(path: Path) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in _bad_rows()))
    return path


EXPECTED_REASONS = {"wrong dimension": 1, "NaN or infinity": 1, "empty id": 1, "id too long": 1, "bad metadata": 1,
                    "duplicate id": 1, "zero vector": 1, "unreadable row": 1, "missing vector": 1}


def test_import_rejects_bad_rows_with_reasons_and_imports_the_rest(redis_url: str, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    src = _write_bad(tmp_path / "rows.jsonl")
    cli_json(capsys, redis_url, "create-space", "s", "--dim", 3)
    s = cli_json(capsys, redis_url, "import", "s", src, "--batch", 2, "--rejects", tmp_path / "rej.jsonl",
                 code=EXIT_REJECTED)
    assert (s["rows_read"], s["imported"], s["rejected"]) == (14, 5, 9)
    assert s["rejected_by_reason"] == EXPECTED_REASONS
    assert [e["row"] for e in s["rejected_examples"]] == [2, 3, 4, 5, 6]  # the first five
    assert "dim=3" in s["rejected_examples"][0]["reasons"][0]["detail"]
    rej = read_jsonl(tmp_path / "rej.jsonl")
    assert [r["row"] for r in rej] == [2, 3, 4, 5, 6, 7, 8, 9, 12]
    assert rej[5]["reasons"][0]["detail"] == "id 'a' already appeared at row 0"
    with embcache.connect(redis_url) as hub:
        v = hub.space("s").version("v1")
        assert sorted(v.ids()) == ["7", "a", "b", "g", "i"]
        got = v.get(["a", "g", "b"])
        assert got.metadatas == [{"genre": "x"}, {"nested": {"k": [1, 2]}}, None]
        np.testing.assert_array_equal(got.embeddings[0], [1, 0, 0])  # the first "a", not the duplicate

    # the text summary says the same for people
    code, out, _ = cli(capsys, redis_url, "import", "s", src, "--new-version")
    assert code == EXIT_REJECTED
    assert "imported 5 of 14 rows into s/v2" in out and "rejected 9 rows:" in out
    assert "row 2 (id 'c'): the vector has 2 values, the space has dim=3" in out
    assert "--rejects FILE.jsonl lists every rejected row" in out


def test_csv_with_json_vector_cells(redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "rows.csv"
    src.write_text('key,vec,title,genre\n'
                   'm1,"[1, 0, 0, 0]","Heat, 1995",crime\n'
                   'm2,"[0, 1, 0, 0]",Alien,scifi\n'
                   'm3,"[0, 1, 0",Broken,scifi\n'  # unreadable cell
                   'm4,,Empty,scifi\n'  # no vector
                   'm5,"[0, 0, 1, 0]",Ran,drama\n')
    cli_json(capsys, redis_url, "create-space", "films", "--dim", 4, "--metric", "l2")
    s = cli_json(capsys, redis_url, "import", "films", src, "--id-field", "key", "--vector-field", "vec",
                 "--metadata-fields", "title", code=EXIT_REJECTED)
    assert (s["imported"], s["rejected_by_reason"]) == (3, {"unreadable vector": 1, "missing vector": 1})
    with embcache.connect(redis_url) as hub:
        got = hub.space("films").version("v1").get(["m1", "m5"])
        assert got.metadatas == [{"title": "Heat, 1995"}, {"title": "Ran"}]
        np.testing.assert_array_equal(got.embeddings, [[1, 0, 0, 0], [0, 0, 1, 0]])


def test_dry_run_checks_everything_and_writes_nothing(redis_url: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    src = _write_bad(tmp_path / "rows.jsonl")
    cli_json(capsys, redis_url, "create-space", "s", "--dim", 3)
    s = cli_json(capsys, redis_url, "import", "s", src, "--dry-run", code=EXIT_REJECTED)
    assert s["dry_run"] and (s["imported"], s["rejected"]) == (5, 9) and s["rejected_by_reason"] == EXPECTED_REASONS
    assert cli_json(capsys, redis_url, "versions", "s") == []  # not even a version was created
    good = write_jsonl(tmp_path / "good.jsonl", [{"id": "a", "embedding": [1, 2, 3]}])
    code, out, _ = cli(capsys, redis_url, "import", "s", good, "--dry-run")
    assert code == 0 and "would import 1 of 1 rows" in out and "dry run: nothing written" in out
    assert cli_json(capsys, redis_url, "versions", "s") == []


def test_npz_import_and_export_keep_partitions(redis_url: str, minilm_subset: MiniLMSubset, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """``--partition-field`` splits a cosine space by section; ``export --format npz`` and back keeps everything.
    Vectors come back normalised (cosine): equal to the normalised float32 input up to float32 rounding."""
    n = 600
    keep = [i for i in range(n) if minilm_subset.metadatas[i]["section"]]  # "" is no partition name
    dropped = n - len(keep)
    src = tmp_path / "in.npz"
    np.savez(src, ids=np.array(minilm_subset.ids[:n]), embeddings=np.load(BASE)[:n],
             metadatas=np.array([json.dumps(m) for m in minilm_subset.metadatas[:n]]))
    cli_json(capsys, redis_url, "create-space", "deb", "--dim", 384)
    s = cli_json(capsys, redis_url, "import", "deb", src, "--partition-field", "section",
                 code=EXIT_REJECTED if dropped else 0)
    assert s["imported"] == len(keep) and s["rejected_by_reason"] == ({"missing partition": dropped} if dropped else {})
    sections = {minilm_subset.metadatas[i]["section"] for i in keep}
    assert set(s["partitions"]) == sections

    out = cli_json(capsys, redis_url, "export", "deb", "--format", "npz", "--out", tmp_path / "out")
    z = np.load(tmp_path / "out.npz")
    assert out["items"] == len(keep) and list(z["partitions"]) == sorted(z["partitions"])  # partition, then id order
    row_of = {i: k for k, i in enumerate(minilm_subset.ids)}
    rows = [row_of[i] for i in z["ids"]]
    assert sorted(rows) == keep
    want = minilm_subset.base[rows] / np.linalg.norm(minilm_subset.base[rows], axis=1, keepdims=True)
    np.testing.assert_allclose(z["embeddings"], want, rtol=0, atol=1e-6)
    for r, p, m in zip(rows, z["partitions"], z["metadatas"]):  # the partition field is not kept as metadata
        meta = minilm_subset.metadatas[r]
        assert p == meta["section"] and json.loads(m) == {"short": meta["short"]}

    again = cli_json(capsys, redis_url, "import", "deb", tmp_path / "out.npz", "--new-version")
    assert again["imported"] == len(keep) and sorted(again["partitions"].items()) == sorted(out["partitions"].items())
    cli_json(capsys, redis_url, "export", "deb", "--version", "v2", "--format", "npz", "--out", tmp_path / "again")
    z2 = np.load(tmp_path / "again.npz")
    for name in ("ids", "metadatas", "partitions"):
        assert list(z2[name]) == list(z[name])
    np.testing.assert_allclose(z2["embeddings"], z["embeddings"], rtol=0, atol=1e-6)


def test_versions_partitions_and_ids_living_elsewhere(redis_url: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    rows = [{"id": f"i{k}", "embedding": [k + 1.0, 1.0], "lang": "en" if k % 2 else "fr"} for k in range(6)]
    src = write_jsonl(tmp_path / "rows.jsonl", rows)
    cli_json(capsys, redis_url, "create-space", "s", "--dim", 2, "--metric", "l2")
    assert cli_json(capsys, redis_url, "import", "s", src, "--new-version")["version"] == "v1"
    assert cli_json(capsys, redis_url, "import", "s", src, "--new-version", "--version", "two")["version"] == "two"
    # default target: the newest version, then live's target
    assert cli_json(capsys, redis_url, "import", "s", src)["version"] == "two"
    cli_json(capsys, redis_url, "alias", "s", "live", "v1")
    assert cli_json(capsys, redis_url, "import", "s", src)["version"] == "v1"
    s = cli_json(capsys, redis_url, "import", "s", src, "--partition-field", "lang", "--version", "two",
                 code=EXIT_REJECTED)
    # "two" holds i0..i5 in "default": an id lives in one partition, so every row is refused, with the reason
    assert s["imported"] == 0 and s["rejected_by_reason"] == {"id in another partition": 6}
    assert "already lives in partition 'default' of s/two" in s["rejected_examples"][0]["reasons"][0]["detail"]
    s = cli_json(capsys, redis_url, "import", "s", "--new-version", src, "--partition-field", "lang")
    three = s["version"]
    assert three not in ("v1", "two") and s["partitions"] == {"fr": 3, "en": 3}
    with embcache.connect(redis_url) as hub:
        v3 = hub.space("s").version(three)
        assert v3.partitions() == ["en", "fr"] and v3.get(["i1"]).metadatas == [None]  # lang is the partition
    s = cli_json(capsys, redis_url, "import", "s", src, "--partition", "p2", "--metadata-fields", "lang,nope",
                 code=EXIT_REJECTED)
    assert s["version"] == "v1" and s["imported"] == 0 and s["rejected"] == 6  # live -> v1, ids in default
    s = cli_json(capsys, redis_url, "export", "s", "--partition", "en", "--version", three, "--out", tmp_path / "en")
    assert s["items"] == 3 and [r["id"] for r in read_jsonl(tmp_path / "en.jsonl")] == ["i1", "i3", "i5"]
    # without --items, ids are row numbers
    np.save(tmp_path / "v.npy", np.arange(6, dtype=np.float32).reshape(3, 2) + 1)
    s = cli_json(capsys, redis_url, "import", "s", "--vectors", tmp_path / "v.npy", "--new-version")
    with embcache.connect(redis_url) as hub:
        assert sorted(hub.space("s").version(s["version"]).ids()) == ["0", "1", "2"]


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is None,
                    reason="pyarrow is not installed (pip install 'embcache[parquet]')")
def test_parquet(redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"id": ["a", "b", "c"], "embedding": [[1.0, 0.0], [0.0, 1.0], [1.0]], "tag": ["x", "y", "z"]})
    pq.write_table(table, tmp_path / "t.parquet")
    cli_json(capsys, redis_url, "create-space", "s", "--dim", 2)
    s = cli_json(capsys, redis_url, "import", "s", tmp_path / "t.parquet", code=EXIT_REJECTED)
    assert s["imported"] == 2 and s["rejected_by_reason"] == {"wrong dimension": 1}
    pq.write_table(pa.table({"id": ["p", "q"], "tag": ["x", "y"]}), tmp_path / "items.parquet")
    np.save(tmp_path / "v.npy", np.eye(2, dtype=np.float32))
    s = cli_json(capsys, redis_url, "import", "s", "--vectors", tmp_path / "v.npy", "--items",
                 tmp_path / "items.parquet")
    assert s["imported"] == 2


def test_parquet_without_pyarrow_says_what_to_install(redis_url: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow now fails, as when it is not installed
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    (tmp_path / "t.parquet").write_bytes(b"PAR1")
    cli_json(capsys, redis_url, "create-space", "s", "--dim", 2)
    code, out, err = cli(capsys, redis_url, "import", "s", tmp_path / "t.parquet")
    assert code == 1 and out == ""
    assert "pip install 'embcache[parquet]'" in err


# --json everywhere ----------------------------------------------------------------------------------------
def test_json_output_of_the_read_and_admin_commands(redis_url: str, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    created = cli_json(capsys, redis_url, "create-space", "s", "--dim", 2, "--metric", "l2")
    assert created["name"] == "s" and created["dim"] == 2 and created["metric"] == "l2"
    assert [r["name"] for r in cli_json(capsys, redis_url, "spaces")] == ["s"]
    with embcache.connect(redis_url) as hub:
        sp = hub.space("s")
        sp.create_version().upsert(["a", "b"], [[0.0, 0.0], [3.0, 4.0]], [{"k": 1}, None])
        sp.create_version().upsert(["c"], [[1.0, 1.0]])
    assert cli_json(capsys, redis_url, "alias", "s", "live", "v1") == {"live": "v1"}
    assert cli_json(capsys, redis_url, "alias", "s", "live", "v2") == {"live": "v2"}
    assert cli_json(capsys, redis_url, "rollback", "s") == {"alias": "live", "version": "v1"}
    assert cli_json(capsys, redis_url, "seal", "s", "v1") == {"sealed": "s/v1"}
    d = cli_json(capsys, redis_url, "describe", "s")
    assert d["aliases"] == {"live": "v1"}
    assert [(v["name"], v["state"], v["count"]) for v in d["versions"]] == [("v1", "sealed", 2), ("v2", "open", 1)]
    vs = cli_json(capsys, redis_url, "versions", "s")
    assert [(v["name"], v["aliases"]) for v in vs] == [("v1", "live"), ("v2", "")]
    st = cli_json(capsys, redis_url, "stats", "s")
    assert st[0]["partition"] == "default" and st[0]["count"] == 2
    q = cli_json(capsys, redis_url, "query", "s", "--id", "a", "-n", 2, "--consistency", "strong")
    assert q == [{"query": "a", "results": [{"id": "b", "distance": pytest.approx(25.0), "metadata": None}]}]
    np.save(tmp_path / "q.npy", np.array([[0.0, 0.0], [3.0, 3.0]], dtype=np.float32))
    q = cli_json(capsys, redis_url, "query", "s", "--vectors", tmp_path / "q.npy", "-n", 5)
    assert [[r["id"] for r in row["results"]] for row in q] == [["a", "b"], ["b", "a"]]
    assert q[0]["results"][0] == {"id": "a", "distance": 0.0, "metadata": {"k": 1}}
    np.save(tmp_path / "one.npy", np.array([3.0, 3.0], dtype=np.float32))  # one vector, 1-D
    q = cli_json(capsys, redis_url, "query", "s", "--vectors", tmp_path / "one.npy", "-n", 1)
    assert [[r["id"] for r in row["results"]] for row in q] == [["b"]]
    q = cli_json(capsys, redis_url, "query", "s", "--vectors", tmp_path / "q.npy", "-n", 5, "--exclude", "a",
                 "--explain")
    assert [[r["id"] for r in row["results"]] for row in q["results"]] == [["b"], ["b"]]
    assert q["explain"]["plan"].startswith("exact on partition default") and q["explain"]["steps"][0]["matches"] == 1
    code, text, _ = cli(capsys, redis_url, "query", "s", "--id", "a", "-n", 1, "--explain")
    assert code == 0 and "plan: " in text


# errors ---------------------------------------------------------------------------------------------------
def test_errors_say_what_to_do(redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_jsonl(tmp_path / "rows.jsonl", [{"id": "a", "embedding": [1.0, 2.0]}])
    for argv in (["import", "nope", src], ["export", "nope", "--out", tmp_path / "x"], ["describe", "nope"],
                 ["query", "nope", "--id", "a"], ["versions", "nope"]):
        code, out, err = cli(capsys, redis_url, *argv)
        assert code == 1 and out == "", argv
        assert "no space named 'nope'" in err and "embcache spaces" in err and "embcache create-space" in err, err

    cli_json(capsys, redis_url, "create-space", "s", "--dim", 2)
    code, _, err = cli(capsys, redis_url, "export", "s", "--version", "v9", "--out", tmp_path / "x")
    assert code == 1 and "embcache versions s" in err
    code, _, err = cli(capsys, redis_url, "import", "s", tmp_path / "missing.jsonl")
    assert code == 1 and "missing.jsonl: no such file" in err
    code, _, err = cli(capsys, redis_url, "import", "s", tmp_path / "rows.txt")
    assert code == 1 and "unknown format" in err
    np.save(tmp_path / "wide.npy", np.ones((2, 5), dtype=np.float32))
    code, _, err = cli(capsys, redis_url, "import", "s", "--vectors", tmp_path / "wide.npy")
    assert code == 1 and "dimension 5 but space s has dim=2" in err
    np.save(tmp_path / "two.npy", np.ones((2, 2), dtype=np.float32))
    code, _, err = cli(capsys, redis_url, "import", "s", "--vectors", tmp_path / "two.npy", "--items", src)
    assert code == 1 and "has 2 vectors but" in err and "1 rows" in err
    assert cli_json(capsys, redis_url, "import", "s", src)["imported"] == 1
    cli_json(capsys, redis_url, "seal", "s", "v1")
    code, _, err = cli(capsys, redis_url, "import", "s", src)
    assert code == 1 and "sealed" in err and "--new-version" in err
    code, _, err = cli(capsys, redis_url, "import", "s")
    assert code == 1 and "nothing to import" in err
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY garbage")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    for bad, says in (("bad.npy", "not a readable .npy file"), ("obj.npy", "not a readable .npy file"),
                      ("missing.npy", "no such file")):
        code, out, err = cli(capsys, redis_url, "query", "s", "--vectors", tmp_path / bad)
        assert code == 1 and out == "" and says in err and "Traceback" not in err, (bad, err)
    with pytest.raises(SystemExit) as exc:  # argparse: bad usage is exit code 2
        main(["--url", redis_url, "import"])
    assert exc.value.code == 2


def test_malformed_where_json_is_a_clear_error(redis_url: str, capsys) -> None:  # noqa: ANN001
    from embcache.cli import main

    with embcache.connect(redis_url) as hub:
        hub.create_space("w", dim=2, metric="l2").create_version().upsert(["a", "b"], [[0.0, 1.0], [1.0, 0.0]])
    assert main(["--url", redis_url, "query", "w", "--id", "a", "--where", "{bad"]) == 1
    err = capsys.readouterr().err
    assert "InvalidInput" in err and "--where is not valid JSON" in err and "Traceback" not in err


def test_query_needs_ids_or_vectors_and_says_so_with_exit_2(redis_url: str, capsys) -> None:  # noqa: ANN001
    from embcache.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["--url", redis_url, "query", "w"])
    assert exc.value.code == 2 and "--id" in capsys.readouterr().err


def test_promote_and_rollback(redis_url: str, capsys) -> None:  # noqa: ANN001
    from embcache.cli import main

    with embcache.connect(redis_url) as hub:
        sp = hub.create_space("p", dim=2, metric="l2")
        sp.create_version()
        sp.create_version()
    assert main(["--url", redis_url, "promote", "p", "v1"]) == 0
    assert main(["--url", redis_url, "promote", "p", "v2"]) == 0
    capsys.readouterr()
    assert main(["--url", redis_url, "--json", "promote", "p", "v1", "--to", "canary"]) == 0
    assert json.loads(capsys.readouterr().out) == {"live": "v2", "canary": "v1"}
    assert main(["--url", redis_url, "rollback", "p"]) == 0
    with embcache.connect(redis_url) as hub:
        assert hub.space("p").aliases() == {"live": "v1", "canary": "v1"}
