"""A real headless browser (Chromium or Chrome) looking at a report from disk, as a user would open
it: no server, a ``file://`` address. Used by the report demo and its test."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def find_browser() -> str | None:
    return next((path for name in NAMES if (path := shutil.which(name))), None)


def screenshot(page: str | Path, png: str | Path, width: int = 1400, height: int = 900,
               browser: str | None = None, timeout: float = 120) -> Path:
    """Open ``page`` from disk in headless Chromium and save what it shows to ``png``."""
    browser = browser or find_browser()
    if browser is None:
        raise RuntimeError("no Chromium or Chrome found; install one (Debian/Ubuntu: apt-get install chromium)")
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="neoseg-browser-") as profile:
        cmd = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               "--allow-file-access-from-files", f"--user-data-dir={profile}", "--virtual-time-budget=5000",
               f"--window-size={width},{height}", f"--screenshot={png}", Path(page).resolve().as_uri()]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0 or not png.is_file():
        raise RuntimeError(f"{browser} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return png


def colour_pixels(png: str | Path, hex_colour: str, tolerance: int = 40) -> int:
    """How many pixels of ``png`` are close to ``hex_colour``: proof that pictures drawn in that
    colour were loaded and shown."""
    from PIL import Image

    rgb = np.asarray(Image.open(png).convert("RGB"), np.int16)
    target = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)], np.int16)
    return int((np.abs(rgb - target).max(axis=2) <= tolerance).sum())
