"""The docs cannot drift from the code: docs/api.md is what scripts/gen_api_docs.py generates from the docstrings,
every documented callable and property has a docstring, and relative links in the docs point at files."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gen_api_docs.py"


def _generator():  # noqa: ANN202
    spec = importlib.util.spec_from_file_location("gen_api_docs", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_api_reference_is_current() -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--check"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, f"docs/api.md is stale; run python scripts/gen_api_docs.py\n{proc.stderr}"


def test_every_documented_name_has_a_docstring() -> None:
    gen = _generator()
    names = list(gen.documented())
    assert len(names) > 80  # the whole surface, not an accidentally empty walk
    missing = [name for name, _, doc in names if not (doc or "").strip()]
    assert not missing, f"public names without a docstring: {missing}"


def test_generation_is_deterministic() -> None:
    gen = _generator()
    assert gen.generate() == gen.generate()


@pytest.mark.parametrize("doc", sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")]), ids=lambda p: p.name)
def test_relative_links_resolve(doc: Path) -> None:
    text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        if not (doc.parent / target.split("#", 1)[0]).exists():
            broken.append(target)
    assert not broken, f"{doc.name}: broken links {broken}"


def test_the_package_says_where_it_lives_and_under_which_licence() -> None:
    """pip show / PyPI list the project's links and licence from pyproject; the licence text ships beside it."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert {"Homepage", "Source", "Issues", "Documentation"} <= set(project["urls"])
    assert all(u.startswith("https://") for u in project["urls"].values())
    assert project["license"]["text"] == "Apache-2.0"
    assert "Apache License" in (ROOT / "LICENSE").read_text()[:200]
