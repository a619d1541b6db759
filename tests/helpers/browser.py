"""Debian's chromium, headless, driven by Playwright (no browser download)."""

from __future__ import annotations

import shutil
from pathlib import Path

from helpers.commands import missing_tool

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        missing_tool("Debian's chromium", "apt-get install chromium")
    return path
