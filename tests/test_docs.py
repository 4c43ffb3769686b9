"""The manual is self-contained: README and docs/ link only to files of the repository (and to
headings that exist), never to paths outside it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
    return {slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", text, re.MULTILINE)}


def test_no_page_points_outside_the_repository():
    for page in PAGES:
        text = page.read_text()
        assert "../shared" not in text and "/work/" not in text, page.relative_to(ROOT)


def test_relative_links_and_anchors_resolve():
    checked = 0
    for page in PAGES:
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            assert dest.exists(), f"{page.relative_to(ROOT)} links to missing {target}"
            where = page.relative_to(ROOT)
            assert ROOT in dest.parents or dest == ROOT, f"{where} links outside the repository: {target}"
            if anchor and dest.suffix == ".md":
                assert anchor in anchors(dest), f"{where}: no heading '#{anchor}' in {path or page.name}"
            checked += 1
    assert checked > 10  # the pages do link to each other


def test_the_manual_covers_the_method():
    text = (ROOT / "docs" / "method.md").read_text()
    for topic in ("hierarchy", "unknown", "IUC", "HUC", "WEIGHT", "WNORM", "observed", "Supervised",
                  "Semi-supervised", "min–max", "HD95", "Choices the paper leaves open"):
        assert topic in text, topic


def test_the_readme_is_short_and_indexes_every_page():
    """The README is an overview of at most 250 lines; the details live in docs/, and each page
    there is reachable from the README's documentation index."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in LINK.findall(readme)}
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert page.resolve() in linked, f"README does not link docs/{page.name}"
