"""Every Python snippet in the README and the docs runs as written."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted(ROOT.joinpath("docs").rglob("*.md"))]
BLOCKS = [
    (f"{page.relative_to(ROOT)}[{i}]", block)
    for page in PAGES
    for i, block in enumerate(re.findall(r"```python\n(.*?)```", page.read_text(), re.S))
]


@pytest.mark.parametrize("name,code", BLOCKS, ids=[n for n, _ in BLOCKS])
def test_snippet_runs(name, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, name, "exec"), {"__name__": "__snippet__"})


def test_readme_has_snippets_and_commands():
    text = (ROOT / "README.md").read_text()
    assert sum(n.startswith("README") for n, _ in BLOCKS) >= 4
    assert sum(n.startswith("docs") for n, _ in BLOCKS) >= 5
    assert "bash run.sh demo" in text and "bash run.sh test" in text
