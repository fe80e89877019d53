"""The UI's built files in api/static are committed (a ``pip install`` needs no Node): they must be the
build of ui/src. The test rebuilds the UI (``npm ci`` of the locked packages in a copy of ui/, or the
checkout's ui/node_modules when it is installed, then ``node build.mjs OUT``) and compares byte for
byte; it also type-checks the sources (``tsc --noEmit``). Skipped, with the reason, when node or npm
is missing or the packages cannot be installed (no registry)."""

from __future__ import annotations

import filecmp
import json
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UI = ROOT / "ui"
STATIC = ROOT / "api" / "static"
BUILT = ("app.js", "app.css", "index.html")
NODE, NPM = shutil.which("node"), shutil.which("npm")
pytestmark = pytest.mark.skipif(NODE is None or NPM is None, reason="node and npm are not installed")


@pytest.fixture(scope="module")
def ui_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ui/ with its locked packages installed: the checkout's when they are there, else a copy."""
    lock = json.loads((UI / "package-lock.json").read_text())
    installed = UI / "node_modules" / ".package-lock.json"
    if installed.exists() and json.loads(installed.read_text())["packages"].keys() <= lock["packages"].keys():
        return UI
    copy = tmp_path_factory.mktemp("ui") / "ui"
    shutil.copytree(UI, copy, ignore=shutil.ignore_patterns("node_modules"))
    r = subprocess.run([NPM or "npm", "ci", "--no-audit", "--no-fund"], cwd=copy, capture_output=True, text=True,
                       timeout=600)  # fmt: skip
    if r.returncode != 0:
        pytest.skip(f"npm ci failed (no package registry?): {r.stderr.strip()[-500:]}")
    return copy


def test_committed_bundle_is_the_build_of_the_sources(ui_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "static"
    out.mkdir()
    r = subprocess.run([NODE or "node", "build.mjs", str(out)], cwd=ui_dir, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    stale = [name for name in BUILT if not filecmp.cmp(out / name, STATIC / name, shallow=False)]
    assert not stale, (
        f"api/static/{', '.join(stale)} differ from the build of ui/src: run `npm ci && npm run build` in ui/"
    )
    assert sorted(p.name for p in STATIC.iterdir()) == sorted(BUILT), "api/static holds files the build does not make"


def test_sources_type_check(ui_dir: Path) -> None:
    r = subprocess.run([NPM or "npm", "run", "--silent", "check"], cwd=ui_dir, capture_output=True, text=True,
                       timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr


def test_no_html_sinks_and_nothing_fetched_from_elsewhere() -> None:
    """Text from the API is set as text: the sources use no HTML parsing sink; and the page loads nothing
    from another origin (no CDN, no web fonts)."""
    sources = {p.name: p.read_text() for p in (UI / "src").iterdir() if p.suffix in (".ts", ".html", ".css")}
    for name, text in sources.items():
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "DOMParser", "eval("):
            assert sink not in text, f"ui/src/{name} uses {sink}"
        for remote in ("http://", "https://", "//cdn", "@import", "url(http"):
            assert remote not in text.replace("http://www.w3.org/2000/svg", ""), f"ui/src/{name} refers to {remote}"
