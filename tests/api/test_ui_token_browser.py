"""The UI of a server with a token file, in a real browser: the page asks for a token, refuses a wrong
one, and lists the traces once the right one is typed. `hopscope serve --token-file` serves a chDB
store on a free loopback port; the test drives Debian's headless Chromium over the DevTools protocol
on a pipe (``--remote-debugging-pipe``: JSON messages ended by a NUL byte, read by Chromium from file
descriptor 3 and answered on 4), types with ``Input.insertText`` and reads the page with
``Runtime.evaluate``. Skipped when Chromium is absent."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pytest

from hopscope.api.tokens import add_token
from hopscope.records import Batch, Span, Trace
from hopscope.store import store_from_url
from tests.api.test_serve import ROOT, _free_port
from tests.api.test_ui_browser import CHROMIUM, _wait_ready
from tests.topology.paths import lab_trace

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (deploy/setup.sh installs it)")
TRACES = 3
TIMEOUT_S = 60.0


class DevTools:
    """A headless Chromium driven over the DevTools protocol on a pipe; one attached page."""

    def __init__(self, profile: str) -> None:
        assert CHROMIUM is not None
        to_chromium, self._commands = os.pipe()
        self._events, from_chromium = os.pipe()

        def give_pipes() -> None:  # in the child: the pipe ends at the descriptors Chromium reads
            os.setsid()  # its own process group, so close() ends its helper processes too
            os.dup2(to_chromium, 3)
            os.dup2(from_chromium, 4)

        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--remote-debugging-pipe",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "about:blank"],
            preexec_fn=give_pipes, close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        os.close(to_chromium)
        os.close(from_chromium)
        self._buffer = b""
        self._next_id = 0
        self.session: str | None = None

    def call(self, method: str, params: dict[str, Any] | None = None, *, page: bool = True) -> dict[str, Any]:
        """Send one command (to the attached page unless ``page`` is false) and return its result."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if page and self.session:
            message["sessionId"] = self.session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self._next_id:
                assert "error" not in reply, reply
                result: dict[str, Any] = reply["result"]
                return result

    def _read(self) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._events], [], [], TIMEOUT_S)
            chunk = os.read(self._events, 65536) if ready else b""
            assert chunk, "Chromium did not answer"
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        parsed: dict[str, Any] = json.loads(message)
        return parsed

    def open(self, url: str) -> None:
        target = self.call("Target.createTarget", {"url": url}, page=False)["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True}, page=False)[
            "sessionId"
        ]

    def evaluate(self, expression: str) -> Any:
        return self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})["result"].get("value")

    def wait_for(self, expression: str) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while not self.evaluate(expression):
            assert time.monotonic() < deadline, f"the page never showed {expression}"
            time.sleep(0.1)

    def type_into(self, selector: str, text: str) -> None:
        self.evaluate(f"document.querySelector({json.dumps(selector)}).focus()")
        self.call("Input.insertText", {"text": text})

    def close(self) -> None:
        """End Chromium and every helper process it started (they write to the profile until they exit)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        os.close(self._commands)
        os.close(self._events)


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
    browser.wait_for("document.querySelector('#points-graph-svg') !== null")  # the topology views load too
