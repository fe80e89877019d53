"""The UI of a server with a token file, in a real browser: the page asks for a token, refuses a wrong
one, and lists the traces once the right one is typed. `hopscope serve --token-file` serves a chDB
store on a free loopback port; the test drives Debian's headless Chromium over the DevTools protocol
on a pipe (``--remote-debugging-pipe``: JSON messages ended by a NUL byte, read by Chromium from file
descriptor 3 and answered on 4), types with ``Input.insertText`` and reads the page with
``Runtime.evaluate``. Skipped when Chromium is absent."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Iterator

import pytest

from hopscope.api.tokens import add_token
from hopscope.records import Batch, Span, Trace
from hopscope.store import store_from_url
from tests.api.browser import CHROMIUM, DevTools
from tests.api.test_serve import ROOT, _free_port
from tests.api.test_ui_browser import _wait_ready
from tests.topology.paths import lab_trace

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (deploy/setup.sh installs it)")
TRACES = 3


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A store of TRACES traces served with a token file; yields the base URL and a traces:read token."""
    var = tmp_path_factory.mktemp("var")
    url = f"chdb://{var / 'chdb'}"
    store = store_from_url(url)
    store.ensure_schema()
    for n in range(1, TRACES + 1):
        trace, spans = lab_trace(n)
        store.insert("traces", Batch.from_records(Trace, [trace]))
        store.insert("spans", Batch.from_records(Span, spans))
    store.close()
    token = add_token(var / "tokens.json", "ui", ["traces:read"])
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hopscope", "serve", "--store", url, "--port", str(port), "--token-file",
         str(var / "tokens.json")],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base, proc)
        yield base, token
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def browser() -> Iterator[DevTools]:
    # a helper process that outlives the group kill may still write a file as the profile is removed
    with tempfile.TemporaryDirectory(prefix="hopscope-chromium-", ignore_cleanup_errors=True) as profile:
        devtools = DevTools(profile)
        try:
            yield devtools
        finally:
            devtools.close()


ROWS = "document.querySelectorAll('#traces tbody tr').length"
LOGIN_SHOWN = "!document.querySelector('#login').hidden"


def test_the_page_asks_for_a_token_and_lists_traces_with_it(served: tuple[str, str], browser: DevTools) -> None:
    base, token = served
    browser.open(f"{base}/")
    browser.wait_for(LOGIN_SHOWN)
    assert browser.evaluate(ROWS) == 0
    assert browser.evaluate("document.querySelector('#error').hidden") is True  # the form says it, not an error

    browser.type_into("#token", "hst_" + "A" * 43)
    browser.evaluate("document.querySelector('#login button').click()")
    browser.wait_for(f"{LOGIN_SHOWN} && document.querySelector('#login-error').textContent !== ''")
    assert browser.evaluate("document.querySelector('#login-error').textContent") == "the token was not accepted"
    assert browser.evaluate("sessionStorage.getItem('hopscope.token')") is None

    browser.type_into("#token", token)
    browser.evaluate("document.querySelector('#login button').click()")
    browser.wait_for(f"{ROWS} === {TRACES}")
    assert browser.evaluate(LOGIN_SHOWN) is False
    assert browser.evaluate("document.querySelector('#count').textContent") == f"({TRACES})"
    assert browser.evaluate("sessionStorage.getItem('hopscope.token')") == token
    assert browser.evaluate("document.querySelector('#error').hidden") is True
    browser.evaluate("document.querySelector('#tab-topology').click()")
    browser.wait_for("document.querySelector('#points-graph-svg') !== null")  # the topology view loads too
