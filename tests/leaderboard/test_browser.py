"""The HTML report in a real headless browser (Debian's chromium): no console errors, every table and
figure present and decoded, and a screenshot.

Chromium runs three times, each with a fresh profile: ``--dump-dom`` prints the DOM after the load event
(the report's inline check has then set ``data-plots-loaded``), ``--enable-logging=stderr`` prints every
console message and uncaught exception as a ``CONSOLE`` log line, and ``--screenshot`` writes a PNG. A
control page that logs an error checks that the console capture works on the installed chromium, so the
"no console errors" assertion cannot pass vacuously.

Run with ``pytest -m browser tests/leaderboard``; needs ``apt-get install -y chromium``.
"""

from __future__ import annotations

import re
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
WINDOW = (1280, 2400)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                                                     "(apt-get install -y chromium)"),
]

# "INFO:CONSOLE:3] ..." on recent chromium, "INFO:CONSOLE(3)] ..." on older ones
CONSOLE_LINE = re.compile(r":CONSOLE[:(]")


def chromium(url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *extra, url]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def console_messages(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if CONSOLE_LINE.search(line)]


def test_console_capture_detects_errors(tmp_path: Path) -> None:
    page = tmp_path / "control.html"
    page.write_text('<!DOCTYPE html><html><body><p>control</p><script>console.error("control-marker");'
                    "undefinedFunction();</script></body></html>")
    messages = console_messages(chromium(page.as_uri(), tmp_path / "profile", "--dump-dom"))
    assert any("control-marker" in m for m in messages), messages
    assert any("undefinedFunction" in m for m in messages), messages


def test_report_loads_with_every_table_and_plot(built_report: tuple[Path, Path, dict[str, Any]],
                                               tmp_path: Path) -> None:
    _, out, doc = built_report
    result = chromium((out / "index.html").as_uri(), tmp_path / "profile", "--dump-dom")
    assert console_messages(result) == []
    dom = result.stdout
    figures = doc["figures"]
    assert len(figures) == 6  # eval curve, sample efficiency, performance profiles, 3 diagnostics
    assert f'data-plots="{len(figures)}"' in dom
    # set by the page's own check after load: every figure decoded to a non-empty image
    assert f'data-plots-loaded="{len(figures)}"' in dom
    assert re.findall(r'<img class="plot" id="([^"]+)"', dom) == [f["id"] for f in figures]
    for section in ("results", "paper", "curves", "efficiency", "diagnostics", "incomplete", "warnings"):
        assert f'<section id="{section}"' in dom
    assert dom.count("<table") == 5
    for algorithm in ("flow-grpo", "op-grpo", "op-grpo-no-replay"):
        assert f"<td>{algorithm}</td>" in dom
    assert "reported in arXiv 2604.04142, not measured here" in dom


def test_report_screenshot(built_report: tuple[Path, Path, dict[str, Any]], tmp_path: Path) -> None:
    _, out, _ = built_report
    shot = tmp_path / "leaderboard.png"
    result = chromium((out / "index.html").as_uri(), tmp_path / "profile", "--hide-scrollbars",
                      f"--window-size={WINDOW[0]},{WINDOW[1]}", f"--screenshot={shot}")
    assert console_messages(result) == []
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR"
    assert struct.unpack(">II", data[16:24]) == WINDOW
    # not a blank page: a good share of the pixels is not background white
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)[..., :3]
    assert (pixels.min(axis=-1) < 0.9).mean() > 0.05
    print(f"screenshot: {shot}")
