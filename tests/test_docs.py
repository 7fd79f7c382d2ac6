"""The documentation builds: `mkdocs build --strict` over docs/ (a broken link, an anchor that does not exist or
a page missing from the navigation fails it), and the README links only to pages that exist."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def mkdocs_build(project: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                          cwd=project, capture_output=True, text=True, timeout=300,
                          env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"})


def test_docs_build_strictly(tmp_path):
    done = mkdocs_build(REPO, tmp_path / "site")
    assert done.returncode == 0, done.stdout + done.stderr
    for page in ("usage", "configuration", "findings", "accuracy", "benchmarks", "how-it-works"):
        assert (tmp_path / "site" / page / "index.html").is_file()
    assert "training.learning_rate" in (tmp_path / "site" / "configuration" / "index.html").read_text()


def test_a_broken_link_fails_the_build(tmp_path):
    project = tmp_path / "project"
    shutil.copytree(REPO / "docs", project / "docs")
    shutil.copy(REPO / "mkdocs.yml", project / "mkdocs.yml")
    page = project / "docs" / "safety.md"
    page.write_text(page.read_text() + "\nSee [the missing page](missing.md).\n")
    done = mkdocs_build(project, tmp_path / "site")
    assert done.returncode != 0 and "missing.md" in done.stdout + done.stderr


def test_readme_links_point_to_existing_docs_pages():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\((docs/[^)#]+)", readme)
    assert len(links) >= 9
    assert [link for link in links if not (REPO / link).is_file()] == []
    assert len(readme.splitlines()) < 120  # the front door: what it is, set-up, quickstart, where to read on
