"""The documentation holds together: README.md is a short front page that starts with the two
commands, the manual is `docs/*.md` (every page linked from the README), and every relative link
in them (and in benchmarks/README.md) reaches an existing file and, with `#anchor`, a heading there.
Plain text only: nothing is imported from the package and no model is loaded."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS, ROOT / "benchmarks" / "README.md"]
MAX_README_LINES = 200

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
INLINE_LINK = re.compile(r"!?\[((?:[^\[\]]|\[[^\[\]]*\])*)\]"  # [text], one level of brackets inside
                         r"\(\s*<?([^()\s<>]*(?:\([^()\s]*\)[^()\s<>]*)*)>?"  # (target, balanced parentheses
                         r"(?:\s+\"[^\"]*\")?\s*\)")  # and an optional "title")
REFERENCE_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$")
HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"", re.IGNORECASE)
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks (links and headings inside them are not links or headings)."""
    lines, fence = [], None
    for line in text.splitlines():
        m = FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)
        elif fence is not None and m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence):
            fence = None
        elif fence is None:
            lines.append(line)
    return lines


def links(text: str) -> list[str]:
    """Every link target of a markdown text: inline `[text](target)` (and images) and reference
    definitions `[ref]: target`; not inside code blocks or code spans."""
    found = []
    for line in prose_lines(text):
        line = INLINE_CODE.sub(lambda m: "x" * len(m.group(0)), line)
        found += [m.group(2) for m in INLINE_LINK.finditer(line)]
        definition = REFERENCE_DEFINITION.match(line)
        if definition:
            found.append(definition.group(1))
    return found


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its rendered text lower-cased, punctuation removed, spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link renders as its text
    text = re.sub(r"<[^>]+>", "", text)
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """A page's anchors: one per heading (repeats get -1, -2, ... as on GitHub), plus HTML anchors."""
    found, seen = set(), {}
    text = path.read_text(encoding="utf-8")
    for line in prose_lines(text):
        m = HEADING.match(line)
        if m:
            base = slug(m.group(2))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found | set(HTML_ANCHOR.findall(text))


def broken(page: Path, target: str) -> str | None:
    """Why a relative link from `page` does not resolve, or None if it does (external links: not checked)."""
    if SCHEME.match(target) or target.startswith("//"):
        return None
    path_part, _, anchor = target.partition("#")
    dest = (page.parent / unquote(path_part)).resolve() if path_part else page
    if not dest.is_relative_to(ROOT):
        return f"{target}: leaves the repository"
    if not dest.exists():
        return f"{target}: {dest.relative_to(ROOT)} does not exist"
    if anchor and dest.suffix == ".md" and unquote(anchor).lower() not in anchors(dest):
        return f"{target}: no heading with the anchor #{anchor} in {dest.relative_to(ROOT)}"
    return None


def test_readme_is_a_short_front_page():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; move reference text into docs/"


def test_readme_starts_with_the_two_commands():
    """The first section is "Two commands": install + demo, then the test command `.ci/run` runs."""
    text = README.read_text(encoding="utf-8")
    sections = [line for line in prose_lines(text) if line.startswith("## ")]
    assert sections[0] == "## Two commands"
    block = text.split("## Two commands", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
    torch_pin = re.search(r"torch==[\w.+]+", (ROOT / ".ci" / "run").read_text(encoding="utf-8")).group(0)
    install_and_demo = (f'pip install -q {torch_pin} && pip install -q -e ".[dev]" && '
                        "sft-recipe train recipes/demo.yaml")
    assert block == [install_and_demo, "python -m pytest"]


def test_there_is_a_manual():
    assert DOCS, "docs/ holds no pages"
    assert all(page.exists() for page in PAGES)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path):
    problems = [why for target in links(page.read_text(encoding="utf-8")) if (why := broken(page, target))]
    assert not problems, f"{page.relative_to(ROOT)}:\n  " + "\n  ".join(problems)


def test_every_docs_page_is_linked_from_the_readme():
    targets = [t.partition("#")[0] for t in links(README.read_text(encoding="utf-8")) if not SCHEME.match(t)]
    linked = {(README.parent / unquote(t)).resolve() for t in targets if t}
    unlinked = [str(page.relative_to(ROOT)) for page in DOCS if page.resolve() not in linked]
    assert not unlinked, f"not linked from README.md: {unlinked}"


def test_the_link_checker_itself(tmp_path):
    """What the checks above rely on: link extraction skips code, slugs follow GitHub, breakage is seen."""
    text = ("# Top\n[a](x.md) ![i](img.png) [b](x.md#sharded-training-what-was-run) `[c](code.md)`\n"
            "```\n[d](fenced.md)\n# not a heading\n```\n[ref]: y.md\n[e](https://example.com/z.md)\n")
    assert links(text) == ["x.md", "img.png", "x.md#sharded-training-what-was-run", "y.md",
                           "https://example.com/z.md"]
    assert slug("Sharded training: what was run") == "sharded-training-what-was-run"
    assert slug("Chat data (multi-turn conversations, tools, reasoning)") == \
        "chat-data-multi-turn-conversations-tools-reasoning"
    assert slug("Logging, evaluation, callbacks, model card, hub, LoRA") == \
        "logging-evaluation-callbacks-model-card-hub-lora"
    assert slug("`train_on` and [links](a.md)") == "train_on-and-links"
    (tmp_path / "x.md").write_text("# Same\n## Same\n```\n## Fenced\n```\n", encoding="utf-8")
    assert anchors(tmp_path / "x.md") == {"same", "same-1"}
    page = ROOT / "docs" / "page.md"
    assert broken(page, "../README.md#manual") is None
    assert broken(page, "https://example.com/nowhere") is None
    assert "does not exist" in broken(page, "missing.md")
    assert "no heading" in broken(page, "../README.md#no-such-section")
    assert "leaves the repository" in broken(page, "../../outside.md")
