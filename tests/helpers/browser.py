"""``llamafactory-cli webui`` on loopback, and Playwright steps on its page in Debian's chromium."""

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest


CHROMIUM = os.environ.get("P2D_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def playwright_or_skip():
    """``sync_playwright``, or skip the test saying what is missing."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed (pip install -e .[test])")
    if not Path(CHROMIUM).is_file():
        pytest.skip(
            f"Chromium is not installed at {CHROMIUM} (Debian: apt-get install chromium; scripts/test.sh does)"
        )
    return sync_playwright


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_board(work: Path, log_path: Path, timeout: float = 240) -> Iterator[str]:
    """``llamafactory-cli webui`` on a free loopback port with ``work`` as its working directory; yields its URL."""
    bin_dir = Path(sys.executable).parent
    port = free_port()
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",  # the board launches llamafactory-cli
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "BROWSER": "true",  # launch() opens a browser tab; make that a no-op
    }
    log = open(log_path, "w")
    server = subprocess.Popen(
        [str(bin_dir / "llamafactory-cli"), "webui"], cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(url, timeout=5)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("LLaMA-Board did not start:\n" + log_path.read_text()[-4000:]) from None
                time.sleep(1)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def field(page, label: str):
    """A labelled input; LLaMA-Board's labels carry the help text after the name."""
    return page.get_by_label(re.compile(r"^\s*" + re.escape(label) + r"(\s|$)")).first


def choose(page, label: str, value: str) -> None:
    field(page, label).click()
    page.get_by_role("option", name=value, exact=True).click()


def page_text(page) -> str:
    """What the page shows: its text and the values of its text fields (LLaMA-Board's info boxes)."""
    values = page.eval_on_selector_all("textarea, input", "els => els.map(e => e.value)")
    return page.inner_text("body") + "\n" + "\n".join(values)


def wait_text(page, text: str, timeout: float = 60) -> str:
    """Wait until ``text`` shows on the page; returns the page text."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = page_text(page)
        if text in body:
            return body
        time.sleep(0.5)
    raise AssertionError(f"{text!r} never showed; the page ends with:\n{page.inner_text('body')[-3000:]}")


def fill(page, values: dict[str, str]) -> None:
    for label, value in values.items():
        field(page, label).fill(value)
    page.keyboard.press("Tab")
