"""A headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: JSON
messages ended by a NUL byte, read by Chromium from file descriptor 3 and answered on 4), for the UI
tests: open a page, evaluate JavaScript in it (awaiting promises), type, take screenshots."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
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
            os.set_inheritable(3, True)  # dup2 onto itself (a pipe that already was fd 3) keeps close-on-exec
            os.set_inheritable(4, True)

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
            # poll, not select: in a long pytest run the pipe's descriptor can be above select's 1024
            poller = select.poll()
            poller.register(self._events, select.POLLIN)
            ready = poller.poll(TIMEOUT_S * 1000)
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

    def navigate(self, url: str) -> None:
        """Load ``url`` in the attached page (its state in the URL: the UI's views are URLs)."""
        self.call("Page.navigate", {"url": url})

    def viewport(self, width: int, height: int) -> None:
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})  # fmt: skip

    def before_each_page(self, script: str) -> None:
        """Run ``script`` in every document the page loads from now on, before the page's own scripts."""
        self.call("Page.enable")
        self.call("Page.addScriptToEvaluateOnNewDocument", {"source": script})

    def evaluate_async(self, expression: str) -> Any:
        """The value of an expression that gives a promise, once it settled."""
        reply = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        assert "exceptionDetails" not in reply, reply["exceptionDetails"]
        return reply["result"].get("value")

    def screenshot(self, path: Path) -> Path:
        """The whole page (beyond the viewport) as a PNG file."""
        shot = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        path.write_bytes(base64.b64decode(shot["data"]))
        return path
