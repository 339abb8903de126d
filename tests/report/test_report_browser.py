"""The report in a real browser: headless Chromium loads it, finds every section, logs no console
error, and paints a non-blank screenshot. Skipped when Chromium is not installed
(Debian: `apt-get install -y chromium`)."""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from PIL import Image, ImageStat

from curation.report.write import write_report

SECTIONS = ("stages", "funnel", "recipe", "duplicates", "clusters", "retrievals", "relative", "rejects", "quality")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")


def chromium(page: Path, *args: str) -> subprocess.CompletedProcess:
    """Run headless Chromium on a local file with a throwaway profile and no network chatter."""
    with tempfile.TemporaryDirectory() as profile:
        cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *args, page.resolve().as_uri()]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=90)


def console_messages(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line or "Refused to" in line]


def test_console_detection_works(tmp_path: Path) -> None:
    """Control: a page with a script error is caught by the same check (so the real test can fail)."""
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><body><p id="x">x</p><script>nosuch();</script></body></html>')
    result = chromium(bad, "--dump-dom")
    assert 'id="x"' in result.stdout
    assert any("nosuch" in m for m in console_messages(result.stderr))


def test_report_loads_cleanly_in_chromium(synthetic_run, tmp_path: Path) -> None:
    report = write_report(synthetic_run.root)
    result = chromium(report, "--dump-dom")
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    for sid in SECTIONS:
        assert f'id="{sid}"' in dom
    assert dom.count("<img ") == 42 and "<script" not in dom.lower()
    assert console_messages(result.stderr) == []

    shot = tmp_path / "report.png"
    result = chromium(report, f"--screenshot={shot}", "--window-size=1280,2400", "--hide-scrollbars")
    assert result.returncode == 0 and shot.exists()
    with Image.open(shot) as img:
        assert img.size == (1280, 2400)
        assert max(ImageStat.Stat(img.convert("L")).stddev) > 20  # something was painted, not a blank page
