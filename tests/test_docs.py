"""The documentation runs: each page's Python and shell blocks, in order, as one script in an empty folder.

A block that cannot run here (the user's own data, Docker, a GPU) follows `<!-- not runnable: why -->` and is
reported as skipped with that reason; a block after `<!-- ci: STEP -->` is a step of the CI workflow itself.
Shell blocks may run only `medsamlite` commands (through `medsamlite.cli.main`). Fenced blocks without a
language are listings (command synopses, trees) and are not run. The reference site builds strictly.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
PYTHON, SHELL = ("python",), ("bash", "sh", "shell")
_FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)
_MARK = re.compile(r"<!--\s*(not runnable|ci):\s*(.*?)\s*-->\s*$")


@dataclass
class Block:
    page: Path
    line: int  # of the block's first code line in the page
    language: str
    code: str
    skip: str | None  # why it does not run here

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The page's Python and shell blocks with the reason (from the marker before one) that it does not run."""
    text = page.read_text()
    found = []
    for match in _FENCE.finditer(text):
        language = match.group(1).lower()
        if language not in PYTHON + SHELL:
            continue
        before = text[:match.start()].rstrip().rsplit("\n", 1)[-1]
        mark = _MARK.search(before)
        skip = None if mark is None else (f"run by CI ({mark.group(2)})" if mark.group(1) == "ci" else mark.group(2))
        found.append(Block(page, text[:match.start()].count("\n") + 2, language, match.group(2), skip))
    return found


def shell_commands(block: Block) -> list[tuple[int, list[str]]]:
    """(line, argv) of each command; a trailing backslash continues a line, `#` starts a comment."""
    commands, pending, start = [], "", 0
    for i, line in enumerate(block.code.splitlines()):
        pending, start = (pending + " " + line, start) if pending else (line, block.line + i)
        if line.rstrip().endswith("\\"):
            pending = pending.rstrip()[:-1]
            continue
        argv = shlex.split(pending, comments=True)
        if argv:
            commands.append((start, argv))
        pending = ""
    return commands


def run_shell(block: Block) -> None:
    from medsamlite.cli import main

    for line, argv in shell_commands(block):
        where = f"{block.page.relative_to(ROOT)}:{line}"
        assert argv[0] == "medsamlite", (f"{where}: only `medsamlite` commands run in the docs test; "
                                         "mark the block <!-- not runnable: why --> if it cannot run here")
        assert main(argv[1:]) == 0, f"{where}: `{shlex.join(argv)}` failed"


def run_python(block: Block, namespace: dict) -> None:
    # padded to the page's line numbers, so a traceback points at the line in the page
    exec(compile("\n" * (block.line - 1) + block.code, str(block.page), "exec"), namespace)


RUNNABLE = [p for p in PAGES if any(b.skip is None for b in blocks(p))]
SKIPPED = [b for p in PAGES for b in blocks(p) if b.skip]


@pytest.fixture
def docs_env(tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty folder to run in; the session's compile cache, so a model traced once is loaded after."""
    monkeypatch.setenv("MEDSAMLITE_CACHE", str(cache_dir))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("page", RUNNABLE, ids=lambda p: str(p.relative_to(ROOT)))
def test_page_runs(page: Path, docs_env: Path) -> None:
    namespace = {"__name__": "__main__"}
    for block in blocks(page):
        if block.skip is None:
            run_python(block, namespace) if block.language in PYTHON else run_shell(block)


@pytest.mark.parametrize("block", SKIPPED, ids=lambda b: b.where)
def test_not_runnable_blocks_say_why(block: Block) -> None:
    assert block.skip.strip(), f"{block.where}: a not-runnable marker needs a reason"
    pytest.skip(f"{block.where}: {block.skip}")


def test_shell_parser_joins_continuations_and_drops_comments() -> None:
    code = "medsamlite a \\\n  --b 1  # note\n\n# only a comment\nx 'y z'\n"
    block = Block(ROOT / "README.md", 10, "bash", code, None)
    assert shell_commands(block) == [(10, ["medsamlite", "a", "--b", "1"]), (14, ["x", "y z"])]


def test_reference_site_builds_strictly(tmp_path: Path) -> None:
    """`mkdocs build --strict`: a broken link, a page outside the nav or an unresolvable API name fails it."""
    if not all(importlib.util.find_spec(m) for m in ("mkdocs", "material", "mkdocstrings_handlers")):
        pytest.skip("mkdocs-material / mkdocstrings are not installed (the `docs` extra: pip install -e '.[docs]')")
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-4000:]
    api = (site / "api" / "index.html").read_text()
    for name in ("medsamlite.factory.create_model", "medsamlite.runtime.predictor.Predictor",
                 "medsamlite.runtime.metrics.evaluate_case"):
        assert f'id="{name}"' in api, f"the API page does not document {name}"
