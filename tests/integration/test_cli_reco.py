"""``embcache recommend`` and ``embcache compare`` (issue 14) through ``embcache.cli.main`` against a real Redis: the
command line gives what the Python API gives, in --json and as a table, and bad usage is a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import embcache
from tests.datasets import MiniLMSubset
from tests.integration.test_cli import cli, cli_json


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
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    for bad in ("bad.npy", "objects.npy", "missing.npy"):
        code, _, err = cli(capsys, redis_url, "recommend", "debian", "--positive-vectors", tmp_path / bad)
        assert code == 1 and bad in err and "Traceback" not in err


@pytest.fixture
def two_versions(redis_url: str, minilm_subset: MiniLMSubset) -> None:
    data = minilm_subset
    with embcache.connect(redis_url) as hub:
        space = hub.create_space("drift", dim=384, metric="cosine")
        space.create_version().upsert(data.ids[:1500], data.base[:1500])
        moved = data.base[:1500].copy()
        moved[:500] = data.base[2000:2500]  # a third of the items get another item's vector
        space.create_version().upsert(data.ids[100:1500] + data.ids[3000:3100],
                                      np.concatenate([moved[100:], data.base[3000:3100]]))
        space.set_alias("live", "v1")


def test_compare_command(redis_url: str, two_versions: None, tmp_path: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    with embcache.connect(redis_url) as hub:
        want = hub.space("drift").compare("v1", "v2", sample=300, k=5, seed=2)
    got = cli_json(capsys, redis_url, "compare", "drift", "v1", "v2", "--sample", 300, "-k", 5, "--seed", 2)
    got.pop("seconds")
    expected = want.as_dict()
    expected.pop("seconds")
    assert got == json.loads(json.dumps(expected))
    assert (got["in_both"], got["only_in_a"], got["only_in_b"]) == (1400, 100, 100)
    code, out, _ = cli(capsys, redis_url, "compare", "drift", "live", "v2", "--sample", 300, "-k", 5, "--seed", 2)
    assert code == 0 and "drift: v1 -> v2" in out and f"mean {want.overlap_mean:.3f}" in out
    # the plot: a PNG file
    png = tmp_path / "overlap.png"
    code, out, err = cli(capsys, redis_url, "compare", "drift", "v1", "v2", "--sample", 200, "--plot", png)
    assert code == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"plot: {png}" in out


def test_compare_plot_without_matplotlib(redis_url: str, two_versions: None, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    code, out, err = cli(capsys, redis_url, "compare", "drift", "v1", "v2", "--plot", tmp_path / "x.png")
    assert code == 1 and "pip install 'embcache[plot]'" in err and not (tmp_path / "x.png").exists()


def test_promote_with_max_drift(redis_url: str, two_versions: None, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, redis_url, "promote", "drift", "v2", "--max-drift", "0.01")
    assert code == 1 and "max_drift=0.01" in err and "drift: v1 -> v2" in err and "embcache compare" in err
    assert cli_json(capsys, redis_url, "versions", "drift")[0]["aliases"] == "live"  # still v1
    got = cli_json(capsys, redis_url, "promote", "drift", "v2", "--max-drift", "1")
    assert got["live"] == "v2" and 0 < got["drift"] <= 1
    code, _, err = cli(capsys, redis_url, "promote", "drift", "v1", "--max-drift", "2")
    assert code == 1 and "max_drift must be a number in [0, 1]" in err
