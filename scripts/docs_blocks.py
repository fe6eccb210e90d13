"""Runnable blocks in the docs: find them, run them, compare what they print, refresh it.

A fenced block is *runnable* when the line right before its opening fence is ``<!-- run -->``
(invisible on the site and on GitHub). It is a ```` ```bash ```` block of commands written as
from the checkout root (``.venv/bin/python -m app ...``). The fenced block that follows it
(```` ```text ````, only blank lines between) is what the commands print, stdout and stderr
merged in order; no such block means "prints nothing".

The blocks of one page run in order in one fresh temporary folder (a grid, then its report),
with ``.venv`` there a symlink to the checkout's, offline and colourless, each block through
``bash -e -c``. The comparison is exact on structure and loose on numbers: line by line, after
:func:`normalise` (numbers, durations, run ids, timestamps, progress bars); an expected line
``...`` alone matches any number of printed lines.

    python scripts/docs_blocks.py --check            # run every page's blocks; exit 1 on a mismatch
    python scripts/docs_blocks.py --update [FILE...] # rewrite the expected outputs with what ran
    python scripts/docs_blocks.py --list             # the blocks, without running them

``--update`` keeps a block's ``...`` lines where the old expected output still matches (its
other lines take the new text); otherwise it writes the whole output. Review the diff.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARK = "<!-- run -->"
ELLIPSIS = "..."
TMP_SHOWN = "/tmp/…"  # what the temporary folder's path is printed as in the docs
ROOT_SHOWN = "…"  # what the checkout's path is printed as (…/src/app/toy/pt)
ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
       "NO_COLOR": "1", "COLUMNS": "100",
       "PYTHONUNBUFFERED": "1"}  # stdout and stderr interleave as they are written
BLOCK_TIMEOUT_S = 600

_FENCE = re.compile(r"^(?P<fence>`{3,})\s*(?P<info>[\w+-]*)")


@dataclass(frozen=True)
class Block:
    """One runnable block: its file, the 1-based line of its ```bash fence, its commands, and
    its expected output (None: no output block follows) with that block's 0-based content span
    in the file's lines."""

    path: Path
    line: int
    commands: str
    expected: list[str] | None
    span: tuple[int, int] | None  # [start, end) of the output block's content lines
    insert_at: int  # 0-based line after the bash block's closing fence

    @property
    def where(self) -> str:
        try:
            shown = self.path.relative_to(ROOT)
        except ValueError:
            shown = self.path
        return f"{shown}:{self.line}"


@dataclass(frozen=True)
class BlockRun:
    """What one block printed (rendered as a terminal shows it, paths replaced), its exit
    status and its wall time in seconds."""

    block: Block
    output: list[str]
    returncode: int
    seconds: float


def doc_files(root: Path = ROOT) -> list[Path]:
    """README.md and every .md under docs/, sorted."""
    files = [root / "README.md"] if (root / "README.md").exists() else []
    return files + sorted((root / "docs").rglob("*.md"))


def _fence_end(lines: list[str], start: int, fence: str) -> int:
    """Index of the line closing the fence opened at ``start`` (len(lines) if none)."""
    for k in range(start + 1, len(lines)):
        if lines[k].strip().startswith(fence) and lines[k].strip() == "`" * len(lines[k].strip()):
            return k
    return len(lines)


def find_blocks(path: Path) -> list[Block]:
    """The runnable blocks of one Markdown file, in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = _FENCE.match(lines[i].strip())
        if not m:
            i += 1
            continue
        end = _fence_end(lines, i, m["fence"])
        if i > 0 and lines[i - 1].strip() == MARK:
            if m["info"] not in ("bash", "sh", "shell"):
                raise ValueError(f"{path}:{i + 1}: a runnable block must be ```bash, not "
                                 f"```{m['info'] or '(none)'}")
            commands = "\n".join(lines[i + 1:end])
            after = min(end + 1, len(lines))
            j = end + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            out = _FENCE.match(lines[j].strip()) if j < len(lines) else None
            expected = span = None
            if out and out["info"] == "text":
                out_end = _fence_end(lines, j, out["fence"])
                span = (j + 1, out_end)
                expected = lines[j + 1:out_end]
                end = out_end
            blocks.append(Block(path, i + 1, commands, expected, span, insert_at=after))
        i = end + 1
    return blocks


def all_blocks(paths: list[Path] | None = None, root: Path = ROOT) -> dict[Path, list[Block]]:
    """The runnable blocks of each file (README.md and docs/**/*.md by default) that has some."""
    found = {p: find_blocks(p) for p in (paths or doc_files(root))}
    return {p: b for p, b in found.items() if b}


def render(raw: str, replacements: dict[str, str]) -> list[str]:
    """Captured output as a terminal leaves it: each line's text after its last carriage return
    (progress bars redraw with \\r), trailing whitespace dropped, paths replaced."""
    text = raw
    for old, new in sorted(replacements.items(), key=lambda kv: -len(kv[0])):
        # a path followed by alignment padding keeps the columns after it where they were
        pad = " " * max(len(old) - len(new), 0)
        text = re.sub(re.escape(old) + r"([^\n]*?)( {2,})", lambda m: new + m[1] + m[2] + pad, text)
        text = text.replace(old, new)
    lines = []
    for line in text.split("\n"):
        parts = line.split("\r")
        shown = next((p for p in reversed(parts) if p.strip()), "")
        lines.append(shown.rstrip())
    while lines and not lines[-1]:
        lines.pop()
    return lines


def run_page(blocks: list[Block], root: Path = ROOT, keep: bool = False) -> list[BlockRun]:
    """Run one page's blocks in order in one fresh temporary folder (``.venv`` linked to the
    checkout's), each with ``bash -e -c``; stop after the first that exits non-zero."""
    tmp = Path(tempfile.mkdtemp(prefix="docs-"))
    (tmp / ".venv").symlink_to(root / ".venv")
    env = {**os.environ, **ENV}
    for name in ("VIRTUAL_ENV", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"):  # as a user's shell has it
        env.pop(name, None)
    shown = {str(tmp.resolve()): TMP_SHOWN, str(tmp): TMP_SHOWN,
             str(root.resolve()): ROOT_SHOWN, str(root): ROOT_SHOWN}
    runs = []
    try:
        for block in blocks:
            start = time.monotonic()
            try:
                proc = subprocess.run(["bash", "-e", "-c", block.commands], cwd=tmp, env=env,
                                      stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, timeout=BLOCK_TIMEOUT_S)
                raw, code = proc.stdout.decode("utf-8", "replace"), proc.returncode
            except subprocess.TimeoutExpired as exc:
                raw = (exc.stdout or b"").decode("utf-8", "replace")
                raw += f"\n[timed out after {BLOCK_TIMEOUT_S} s]"
                code = 124
            runs.append(BlockRun(block, render(raw, shown), code, time.monotonic() - start))
            if code:
                break
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return runs


# --- comparison -------------------------------------------------------------------------------

_NORMALISE = [
    # timestamps and dates (2026-12-06 03:00:32,792 / 2026-12-06T03:00:32Z / 03:00:32)
    (re.compile(r"\d{4}-\d{2}-\d{2}[ T_]\d{2}[:-]\d{2}[:-]\d{2}(?:[.,]\d+)?"
                r"(?:Z|[+-]\d{2}:?\d{2})?"), "<time>"),
    (re.compile(r"\d{4}-\d{2}-\d{2}"), "<date>"),
    (re.compile(r"\b\d{1,2}:\d{2}:\d{2}(?:[.,]\d+)?\b"), "<time>"),
    # run ids and other hex ids (a 32-hex MLflow run id; fingerprints)
    (re.compile(r"\b[0-9a-f]{32}\b"), "<id>"),
    (re.compile(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*\d)[0-9a-f]{8,}\b"), "<id>"),
    # progress bars and their rates
    (re.compile(r"\|[█▏▎▍▌▋▊▉ ]*\|"), "|<bar>|"),
    (re.compile(r"(?:\d+(?:\.\d+)?|\?)\s?(?:it/s|s/it)"), "<rate>"),
    # durations: (8.3s), 12 s, 1m 3s, 250 ms, 2.5 min
    (re.compile(r"(?<![\w.])(?:\d+(?:\.\d+)?\s?(?:h|min|m)\s?)?\d+(?:\.\d+)?\s?(?:ms|s|sec|min)"
                r"(?![\w/])"), "<dur>"),
    # numbers: ints, floats, signs (also −), thousands separators, exponents
    (re.compile(r"[-+−]?\d+(?:[.,]\d+)*(?:[eE][-+]?\d+)?"), "#"),
    # table rules and padding whose width follows the numbers'
    (re.compile(r"[─━═]+"), "─"),
    (re.compile(r"[ \t]+"), " "),
]


def normalise(line: str) -> str:
    """A line with what varies between runs replaced: timestamps and dates, run ids, progress
    bars, durations, numbers (with their sign) and runs of spaces; trailing spaces dropped."""
    line = line.rstrip()
    for pattern, repl in _NORMALISE:
        line = pattern.sub(repl, line)
    return line


def match(expected: list[str], actual: list[str]) -> tuple[list[int] | None, tuple[int, int]]:
    """Match expected lines (``...`` matching any run of lines) against actual lines.

    Returns (for each expected line the actual line it matched, -1 for ``...``; None when they
    do not match) and the furthest point reached as (expected index, actual index)."""
    exp = [e.rstrip() for e in expected]
    norm_e = [normalise(e) for e in exp]
    norm_a = [normalise(a) for a in actual]
    m, n = len(exp), len(actual)
    parent: dict[tuple[int, int], tuple[int, int] | None] = {(0, 0): None}
    todo = [(0, 0)]
    while todo:
        i, j = todo.pop()
        nxt = []
        if i < m and exp[i].strip() == ELLIPSIS:
            nxt.append((i + 1, j))
            if j < n:
                nxt.append((i, j + 1))
        elif i < m and j < n and norm_e[i] == norm_a[j]:
            nxt.append((i + 1, j + 1))
        for state in nxt:
            if state not in parent:
                parent[state] = (i, j)
                todo.append(state)
    if (m, n) in parent:
        pairs, state = [-1] * m, (m, n)
        while parent[state] is not None:
            prev = parent[state]
            if prev[0] != state[0] and exp[prev[0]].strip() != ELLIPSIS:
                pairs[prev[0]] = prev[1]
            state = prev
        return pairs, (m, n)
    # the failure to show: the furthest expected line reached, at the earliest actual line there
    far = max(parent, key=lambda s: (s[0], -s[1]))
    return None, far


def mismatch(run: BlockRun) -> str | None:
    """Why a block's run does not match its expected output (None when it does): the file and
    line of the block and the first mismatching line, expected vs actual."""
    block, actual = run.block, run.output
    if run.returncode:
        tail = "\n".join(f"    {a}" for a in actual[-15:])
        return (f"{block.where}: the block exited with status {run.returncode}; "
                f"its last lines:\n{tail}")
    expected = block.expected or []
    pairs, (i, j) = match(expected, actual)
    if pairs is not None:
        return None
    line = block.span[0] + 1 + i if block.span else block.line
    exp = expected[i] if i < len(expected) else "(end of output)"
    act = actual[j] if j < len(actual) else "(end of output)"
    if i > 0 and expected[i - 1].strip() == ELLIPSIS and i < len(expected):
        act += f"  (nor any printed line after it, to line {len(actual)})"
    return (f"{block.where}: the output differs from the expected block at "
            f"{block.path.name}:{line} (its line {i + 1}; printed line {j + 1})\n"
            f"  expected: {exp}\n"
            f"  printed:  {act}\n"
            f"  (compared as {normalise(exp)!r} and {normalise(act)!r}; "
            f"`python scripts/docs_blocks.py --update FILE` rewrites it: review the diff)")


# --- update -----------------------------------------------------------------------------------

def refreshed(block: Block, actual: list[str]) -> list[str]:
    """The new expected output: the old one's ``...`` kept and its other lines refreshed when it
    still matches, else everything printed."""
    if block.expected and any(e.strip() == ELLIPSIS for e in block.expected):
        pairs, _ = match(block.expected, actual)
        if pairs is not None:
            return [ELLIPSIS if k < 0 else actual[k] for k in pairs]
    return list(actual)


def update_file(path: Path, runs: list[BlockRun]) -> bool:
    """Rewrite the expected output blocks of ``path`` with its runs'; True if the file changed."""
    lines = path.read_text(encoding="utf-8").splitlines()
    old = list(lines)
    done = [r for r in runs if not r.returncode]
    for run in sorted(done, key=lambda r: -r.block.line):  # bottom up: spans stay valid
        block, new = run.block, refreshed(run.block, run.output)
        fence = "```"
        while any(line.strip().startswith(fence) for line in new):
            fence += "`"
        if block.span:
            start, end = block.span
            lines[start - 1:end + 1] = [fence + "text", *new, fence]
        elif new:
            lines[block.insert_at:block.insert_at] = ["", fence + "text", *new, fence]
    if lines != old:
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return lines != old


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="run and compare; exit 1 on mismatch")
    mode.add_argument("--update", action="store_true", help="run and rewrite expected outputs")
    mode.add_argument("--list", action="store_true", help="list the runnable blocks")
    parser.add_argument("files", nargs="*", type=Path, help="Markdown files (default: all)")
    args = parser.parse_args(argv)
    pages = all_blocks([p.resolve() for p in args.files] or None)
    failed = False
    for path, blocks in pages.items():
        if args.list:
            for b in blocks:
                print(f"{b.where}  {b.commands.splitlines()[0]}")
            continue
        runs = run_page(blocks)
        for run in runs:
            print(f"{run.block.where}  {run.seconds:5.1f}s  {run.block.commands.splitlines()[0]}")
        if args.update:
            if runs[-1].returncode or len(runs) < len(blocks):
                print(mismatch(runs[-1]), file=sys.stderr)
                failed = True
            if update_file(path, runs):
                print(f"updated {path.relative_to(ROOT)}")
        else:
            for run in runs:
                why = mismatch(run)
                if why:
                    print(why, file=sys.stderr)
                    failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
