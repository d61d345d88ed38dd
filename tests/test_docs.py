"""The README and docs/ link to files and sections that exist (the manual moved into several pages, and a page
split again leaves links behind)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(), re.M)
    return {re.sub(r"[^a-z0-9 _-]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


def broken_links(page: Path) -> list[str]:
    broken = []
    for link in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if link.startswith(("http://", "https://", "mailto:")):
            continue
        target, _, anchor = link.partition("#")
        path = (page.parent / target) if target else page
        if not path.exists() or (anchor and path.suffix == ".md" and anchor not in anchors(path)):
            broken.append(link)
    return broken


def test_every_link_of_the_readme_and_the_docs_resolves():
    assert len(PAGES) > 8
    assert {page.name: broken_links(page) for page in PAGES if broken_links(page)} == {}


def test_a_broken_link_or_anchor_is_found(tmp_path):
    (tmp_path / "other.md").write_text("# Scoring a dataset: `score --dataset`\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](other.md#scoring-a-dataset-score---dataset) [gone](missing.md) [bad](other.md#nope) "
                    "[web](https://example.org/x.md)\n")
    assert broken_links(page) == ["missing.md", "other.md#nope"]
