"""``embcache recommend`` and ``embcache compare`` (issue 14) through ``embcache.cli.main`` against a real Redis: the
command line gives what the Python API gives, in --json and as a table, and bad usage is a clear error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import embcache
from embcache.cli import main
from tests.datasets import MiniLMSubset


def cli(capsys: pytest.CaptureFixture[str], url: str, *argv: Any) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["--url", url, *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def cli_json(capsys: pytest.CaptureFixture[str], url: str, *argv: Any, code: int = 0) -> Any:
    got, out, err = cli(capsys, url, "--json", *argv)
    assert got == code, f"exit {got}, stderr:\n{err}\nstdout:\n{out}"
    return json.loads(out)


@pytest.fixture
def minilm(redis_url: str, minilm_subset: MiniLMSubset) -> embcache.Version:
    with embcache.connect(redis_url) as hub:
        v = hub.create_space("debian", dim=384, metric="cosine").create_version()
        v.upsert(minilm_subset.ids[:2000], minilm_subset.base[:2000], metadatas=minilm_subset.metadatas[:2000])
        hub.space("debian").set_alias("live", v)
    return v


def test_recommend_command(redis_url: str, minilm_subset: MiniLMSubset, minilm: embcache.Version,
                           tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ids = minilm_subset.ids
    with embcache.connect(redis_url) as hub:
        v = hub.space("debian").version("live")
        for strategy in ("average", "best_score"):
            want = v.recommend([ids[5], ids[9]], [ids[30]], 7, strategy=strategy)
            rows = cli_json(capsys, redis_url, "recommend", "debian", "--positive", ids[5], "--positive", ids[9],
                            "--negative", ids[30], "-n", 7, "--strategy", strategy)
            assert [r["id"] for r in rows] == want.ids[0]
            np.testing.assert_allclose([r["score"] for r in rows], want.scores[0], atol=1e-6)
            assert rows[0]["metadata"] == minilm_subset.metadatas[ids.index(rows[0]["id"])]
        # vectors from a .npy file, exclusions, the examples allowed back
        np.save(tmp_path / "liked.npy", minilm_subset.base[[5]])
        want = v.recommend(minilm_subset.base[[5]], n_results=5, exclude=[ids[5]])
    rows = cli_json(capsys, redis_url, "recommend", "debian", "--positive-vectors", tmp_path / "liked.npy",
                    "-n", 5, "--exclude", ids[5])
    assert [r["id"] for r in rows] == want.ids[0]
    rows = cli_json(capsys, redis_url, "recommend", "debian", "--positive", ids[5], "-n", 3, "--include-examples")
    assert rows[0]["id"] == ids[5]
    code, out, _ = cli(capsys, redis_url, "recommend", "debian", "--positive", ids[5], "-n", 3)
    assert code == 0 and "best_score" not in out and "average" in out and ids[5] not in out.split("\n", 2)[2]
    # errors: no positive (usage, 2), an unknown id (1, with the message)
    with pytest.raises(SystemExit) as exc:
        cli(capsys, redis_url, "recommend", "debian", "--negative", ids[5])
    assert exc.value.code == 2
    code, _, err = cli(capsys, redis_url, "recommend", "debian", "--positive", "no-such-package")
    assert code == 1 and "no-such-package" in err
