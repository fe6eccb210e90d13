"""The docs cannot rot: the site builds strictly, every runnable block prints what the page shows,
every relative link resolves, every page is reachable, and the README stays a front door."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import docs_blocks  # noqa: E402

README_MAX_LINES = 200
PAGES = docs_blocks.all_blocks()


def test_the_site_builds_strictly(tmp_path):
    """`mkdocs build --strict`: a broken link or anchor, or a page left out of the nav, fails."""
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f",
                           str(ROOT / "mkdocs.yml"), "-d", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "site" / "index.html").exists()


@pytest.mark.parametrize("page", list(PAGES), ids=lambda p: str(p.relative_to(ROOT)))
def test_runnable_blocks_print_what_the_page_shows(page):
    """A page's blocks, run in order in a fresh folder, print their expected outputs."""
    runs = docs_blocks.run_page(PAGES[page])
    problems = [why for run in runs if (why := docs_blocks.mismatch(run))]
    assert not problems, "\n\n".join(problems)


def test_there_are_runnable_blocks():
    assert ROOT / "README.md" in PAGES and sum(map(len, PAGES.values())) >= 5


def test_the_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines (at most {README_MAX_LINES}): move the detail to a "
        "page under docs/ and link it")


_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_SRC = re.compile(r"<(?:img|a)\b[^>]*?(?:src|href)=\"([^\"]+)\"")


def relative_links(path: Path) -> list[tuple[int, str]]:
    """(line, target) of each relative link or image in a Markdown file, outside code."""
    found, fence = [], None
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        m = re.match(r"\s*(`{3,}|~{3,})", line)
        if m:
            fence = None if fence and m[1].startswith(fence) else (fence or m[1])
            continue
        if fence:
            continue
        line = re.sub(r"`[^`]*`", "", line)  # inline code
        for target in _LINK.findall(line) + _SRC.findall(line):
            if not re.match(r"[a-z][a-z0-9+.-]*:|#", target):
                found.append((n, target))
    return found


def test_every_relative_link_resolves():
    broken = []
    for path in docs_blocks.doc_files():
        for n, target in relative_links(path):
            file = target.split("#", 1)[0]
            if not (path.parent / file).exists():
                broken.append(f"{path.relative_to(ROOT)}:{n}: {target}")
    assert not broken, "links to missing files:\n" + "\n".join(broken)


def test_every_page_is_in_the_nav_or_deliberately_left_out():
    from mkdocs.config import load_config

    cfg = load_config(str(ROOT / "mkdocs.yml"))

    def nav_files(items):
        for item in items:
            value = item if isinstance(item, str) else next(iter(item.values()))
            if isinstance(value, list):
                yield from nav_files(value)
            else:
                yield value

    listed = set(nav_files(cfg.nav))
    docs = Path(cfg.docs_dir)
    left_out = [spec for spec in (cfg.exclude_docs, cfg.not_in_nav) if spec]
    orphans = [rel for rel in (p.relative_to(docs).as_posix() for p in sorted(docs.rglob("*.md")))
               if rel not in listed and not any(spec.match_file(rel) for spec in left_out)]
    assert not orphans, f"pages in neither mkdocs.yml's nav nor not_in_nav/exclude_docs: {orphans}"
    missing = sorted(f for f in listed if not (docs / f).exists())
    assert not missing, f"nav entries without a page: {missing}"
