"""The user documentation: a short README whose links lead somewhere, and no development paths in what users read.

The docs site itself is checked by `make docs` (`mkdocs build --strict`: every page in the nav, every link and
anchor resolves); the README is not part of the site, so its links are checked here.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
USER_DOCS = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_readme_is_short():
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 150


def test_readme_links_resolve():
    """Every relative link of the README names a file or folder of the repository (images excepted: a screenshot
    may be committed after the page that shows it)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)", text)
    local = [t.split("#")[0] for t in targets if not re.match(r"[a-z]+:", t) and not t.startswith("#")]
    assert local and [t for t in local if not (ROOT / t).exists()] == []


def test_user_docs_name_no_development_paths():
    """What users read never names the development machines' shared folder, a machine path or an issue."""
    pattern = re.compile(r"\.\./shared|(^|[\s(`=])/(root|work|home|Users)/|\bissues? #?\d+", re.I | re.M)
    found = {p.name: m.group(0) for p in USER_DOCS if (m := pattern.search(p.read_text(encoding="utf-8")))}
    assert found == {}
