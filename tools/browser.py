"""A real browser for the console's tests: Debian's Chromium, headless, driven by
Selenium through Debian's chromedriver (both installed when missing). It accepts any
certificate (`acceptInsecureCerts`): the stacks under test serve one from their own
throwaway CA, which a person would trust once; this browser visits nothing else."""

from __future__ import annotations

import contextlib
import functools
import shlex
import tempfile
from collections.abc import Iterator
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from tools.debian import ensure_commands

NICENESS = 5
#: the two screens the console is built for
DESKTOP = (1280, 800)
PHONE = (390, 844)


@contextlib.contextmanager
def chromium(size: tuple[int, int] = DESKTOP) -> Iterator[webdriver.Chrome]:
    """A headless Chromium showing `size` CSS pixels; quit when the block ends."""
    found = ensure_commands({"chromium": "chromium", "chromedriver": "chromium-driver"})
    options = webdriver.ChromeOptions()
    options.binary_location = str(found["chromium"])
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in a container
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--hide-scrollbars",
        # nothing in the background: with no internet here, Chromium's own requests
        # (updates, sync, safe browsing) only wait for their timeouts
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--disable-domain-reliability",
        "--disable-client-side-phishing-detection",
        "--no-pings",
        "--no-default-browser-check",
        # no crash handler: it outlives the browser (a process left behind per launch)
        "--disable-breakpad",
        "--disable-crash-reporter",
        "--force-device-scale-factor=1",
        f"--window-size={size[0]},{size[1]}",
    ):
        options.add_argument(argument)
    options.accept_insecure_certs = True
    # at a lower CPU priority: on a shared 2-core machine the browser must not starve the
    # other tests' processes of their heartbeats (run as root, Chromium raises its browser
    # and GPU processes itself; its renderers, where pages run, keep the lower priority)
    service = Service(str(_niced(found["chromedriver"])))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        driver.set_window_size(*size)
        inner = driver.execute_script("return [window.innerWidth, window.innerHeight]")
        # the window's frame takes some of its size: grow it until the page gets `size`
        driver.set_window_size(2 * size[0] - int(inner[0]), 2 * size[1] - int(inner[1]))
        yield driver
    finally:
        driver.quit()


@functools.cache
def _niced(chromedriver: Path) -> Path:
    """chromedriver started through `nice`, by a script: lowering the priority in a
    `preexec_fn` made Python fork the whole test process, whose gRPC threads' fork
    handlers then held the child for about 60 s (every other launch, measured)."""
    script = Path(tempfile.mkdtemp(prefix="llmos-chromedriver-")) / "chromedriver"
    script.write_text(f'#!/bin/sh\nexec nice -n {NICENESS} {shlex.quote(str(chromedriver))} "$@"\n')
    script.chmod(0o700)
    return script


def screenshot(driver: webdriver.Chrome, folder: Path, name: str) -> Path:
    """What the window shows now, as `folder/name.png`."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    driver.save_screenshot(str(path))
    return path
