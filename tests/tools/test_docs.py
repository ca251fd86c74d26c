"""Every code block in README.md and docs/*.md runs, or says in the doc why it cannot.

A block is a fenced block with a language: `bash`/`sh` run as a shell script, `python` in a fresh interpreter
(`sys.executable`, the environment the suite runs in), `console` runs its `$ ` lines; `text` (output, diagrams,
transcripts) is not run. A block that cannot run here is preceded by a visible marker with its reason,
`<!-- not run: needs a CUDA GPU -->`. The tests check that every fence names a language, that every marker has a
reason and stands before a block, and run each other block (`test_block_runs[docs/x.md:LINE]`).

Blocks of one file run in order in one scratch folder that looks like a clone (the repository's folders linked in),
so a later block reads what an earlier one wrote, as a reader following the page would. Names of converted
folders that the docs use as examples, and that no earlier block made, are linked to models made once per session
(`FOLDERS`): tiny random Griffins for the RecurrentGemma names, the shipped model and draft converted once for
theirs. `SUBSTITUTIONS` shortens long runs (new tokens) and fills the docs' placeholders.
"""

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from command_helpers import REPO, save_tiny_folder

DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
RUNNERS = {"bash", "sh", "console", "python"}
NOT_RUN_LANGUAGES = {"text"}
MARKER = re.compile(r"^<!--\s*not run:(.*?)-->\s*$")
FENCE = re.compile(r"^(\s*)```(.*)$")
BLOCK_TIMEOUT = 300
# The repository's entries a scratch folder links, so that commands written for a clone's root run there.
CLONE_ENTRIES = ("README.md", "pyproject.toml", "constraints.txt", "constraints-floor.txt", "constraints-machine.txt",
                 "src", "tests", "examples", "benchmarks", "checks", "training", "scripts", "docs")
# How a shell block names a folder it writes (then the name is not linked to a prepared model): convert's or an
# export's OUT, --output.
WRITES = (r"(convert|export-\w+)\s+\S+\s+{}(?![\w-])", r"--output\s+{}(?![\w-])")
# Textual placeholders and long runs made short: (pattern, replacement), applied in order to every block.
SUBSTITUTIONS = [
    (r"--max-new-tokens \d+", "--max-new-tokens 8"),
    (r"(python -m hf_recurrentgemma\.demo)\b", r"\1 --max-new-tokens 8"),
    (r"\bFOLDER\b", "griffin-austen-6m-hf"),
    (r"\bDRAFT\b", "griffin-austen-draft-1m-hf"),
]


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    language: str
    text: str
    not_run: str | None  # the marker's reason; None when the block runs

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def parse(path: Path) -> tuple[list[Block], list[str]]:
    """The fenced blocks of a Markdown file, and the problems found: fences without a language, markers without a
    reason or not followed by a block."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, problems = [], []
    pending: tuple[int, str] | None = None  # (line, reason) of a marker waiting for its block
    i = 0
    while i < len(lines):
        where = f"{path.relative_to(REPO)}:{i + 1}"
        marker = MARKER.match(lines[i].strip())
        fence = FENCE.match(lines[i])
        if marker:
            if pending:
                problems.append(f"{path.relative_to(REPO)}:{pending[0]}: marker not followed by a block")
            pending = (i + 1, marker.group(1).strip())
            if not pending[1]:
                problems.append(f"{where}: `not run` marker without a reason")
        elif fence:
            indent, language = fence.group(1), fence.group(2).strip()
            end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
            if end is None:
                problems.append(f"{where}: unclosed fence")
                break
            body = "\n".join(line[len(indent):] if line.startswith(indent) else line for line in lines[i + 1:end])
            if not language:
                problems.append(f"{where}: fence without a language (bash, python, console, or text for output)")
            elif language not in RUNNERS | NOT_RUN_LANGUAGES:
                problems.append(f"{where}: unknown block language {language!r}")
            reason = pending[1] if pending else None
            if reason is not None and language in NOT_RUN_LANGUAGES:
                problems.append(f"{where}: a `not run` marker before a {language} block, which never runs")
            blocks.append(Block(path, i + 1, language, body, reason))
            pending = None
            i = end
        elif pending and lines[i].strip():
            problems.append(f"{path.relative_to(REPO)}:{pending[0]}: marker not right before a block")
            pending = None
        i += 1
    if pending:
        problems.append(f"{path.relative_to(REPO)}:{pending[0]}: marker at the end of the file")
    return blocks, problems


ALL = [block for path in DOC_FILES for block in parse(path)[0]]
RUNNABLE = [block for block in ALL if block.language in RUNNERS and block.not_run is None]


def test_every_block_has_a_language_and_every_marker_a_reason():
    problems = [problem for path in DOC_FILES for problem in parse(path)[1]]
    assert not problems, "\n".join(problems)
    assert RUNNABLE, "no runnable block found: the parser is broken"


def test_the_parser_sees_markers_and_refuses_bad_ones(tmp_path, monkeypatch):
    """The checks above can fail: a fence without a language, a marker without a reason, and one followed by text
    are each reported; a marked block is not run."""
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    doc = tmp_path / "x.md"
    doc.write_text("<!-- not run: needs a GPU -->\n```bash\nnvidia-smi\n```\n\n```\nplain\n```\n"
                   "<!-- not run: -->\n```bash\nls\n```\n<!-- not run: a reason -->\nprose\n```python\npass\n```\n")
    blocks, problems = parse(doc)
    assert [(b.line, b.language, b.not_run) for b in blocks] == [
        (2, "bash", "needs a GPU"), (6, "", None), (10, "bash", ""), (15, "python", None)]
    assert problems == ["x.md:6: fence without a language (bash, python, console, or text for output)",
                        "x.md:9: `not run` marker without a reason", "x.md:13: marker not right before a block"]


@pytest.fixture(scope="session")
def prepared(tmp_path_factory):
    """Models made once per session, by the names the docs use, and the environment blocks run in."""
    from hf_recurrentgemma.shipped import DRAFT, MODEL, shipped_folder

    root = tmp_path_factory.mktemp("docs-models")
    cache = root / "cache"
    before = os.environ.get("HF_RECURRENTGEMMA_CACHE")
    os.environ["HF_RECURRENTGEMMA_CACHE"] = str(cache)
    try:
        shipped, draft = shipped_folder(MODEL, progress=False), shipped_folder(DRAFT, progress=False)
    finally:
        if before is None:
            del os.environ["HF_RECURRENTGEMMA_CACHE"]
        else:
            os.environ["HF_RECURRENTGEMMA_CACHE"] = before
    tiny = save_tiny_folder(root / "tiny-griffin")
    folders = {
        # The converted shipped model and draft, under the names the README's convert commands give them.
        "griffin-austen-6m-hf": shipped, "griffin-austen-draft-1m-hf": draft,
        # RecurrentGemma releases cannot be downloaded here: a tiny random Griffin (with Gemma's chat template)
        # stands in for each converted folder the docs name.
        **{name: tiny for name in ("recurrentgemma-2b-hf", "recurrentgemma-2b-it-hf", "recurrentgemma-9b-hf")},
    }
    source = Path(__import__("hf_recurrentgemma").__file__).parents[1]  # this checkout's src, first on the path
    env = {**os.environ, "HF_RECURRENTGEMMA_CACHE": str(cache), "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(source), os.environ.get("PYTHONPATH")])),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return folders, env


@pytest.fixture(scope="module")
def scratch_folders(tmp_path_factory):
    """One scratch folder per doc file, made on first use, looking like a clone."""
    made = {}

    def folder(path: Path) -> Path:
        if path not in made:
            made[path] = tmp_path_factory.mktemp(path.stem)
            for entry in CLONE_ENTRIES:
                (made[path] / entry).symlink_to(REPO / entry)
        return made[path]

    return folder


def prepare_text(block: Block) -> str:
    text = block.text
    for pattern, replacement in SUBSTITUTIONS:
        text = re.sub(pattern, replacement, text)
    if block.language == "console":
        text = "\n".join(line[2:] for line in text.splitlines() if line.startswith("$ "))
    return text


@pytest.mark.parametrize("block", RUNNABLE, ids=[block.id for block in RUNNABLE])
def test_block_runs(block, prepared, scratch_folders):
    folders, env = prepared
    where = scratch_folders(block.path)
    text = prepare_text(block)
    for name, target in folders.items():  # a name no earlier block of this page made stands for a prepared model
        named = re.search(rf"(?<![\w/.-]){re.escape(name)}(?![\w-])", text)
        written = block.language != "python" and any(re.search(pattern.format(re.escape(name)), text)
                                                      for pattern in WRITES)
        if named and not written and not (where / name).exists():
            (where / name).symlink_to(target)
    if block.language == "python":
        script = where / f"block_{block.line}.py"
        script.write_text(text + "\n")
        command = [sys.executable, str(script)]
    else:
        command = ["bash", "-e", "-o", "pipefail", "-c", text]
    run = subprocess.run(command, cwd=where, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT,
                         stdin=subprocess.DEVNULL)
    assert run.returncode == 0, (f"{block.id} failed with status {run.returncode}\n--- block as run ---\n{text}\n"
                                 f"--- stdout ---\n{run.stdout[-3000:]}\n--- stderr ---\n{run.stderr[-3000:]}")
