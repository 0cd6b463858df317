"""Test helpers: the repo, the embedded sample, the ../shared data and a stage runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"
SHARED = Path(os.environ.get("CXR_SHARED", REPO.parent / "shared"))
IUXRAY = SHARED / "iuxray"
XCEPTION_WEIGHTS = SHARED / "weights" / "xception_weights_tf_dim_ordering_tf_kernels_notop.h5"
CHROMIUM = os.environ.get("CXR_CHROMIUM", "/usr/bin/chromium")  # as scripts/system.sh checks
GLOVE = SHARED / "glove" / "glove.6B.50d.iuxray-subset.txt"


def needs_shared(path: Path) -> pytest.MarkDecorator:
    """Skip where ../shared is absent (a user's machine); CI always has it."""
    if os.environ.get("CI") and not path.exists():
        raise RuntimeError(f"{path} is missing in CI")
    return pytest.mark.skipif(not path.exists(), reason=f"{path} not available")


def run_stage(
    script: str, *args: str, cwd: Path, check: bool = True, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run one stage script as DVC would, with `cwd` holding its params.yaml."""
    result = subprocess.run(
        [sys.executable, str(REPO / "stages" / script), *args],
        cwd=cwd, capture_output=True, text=True, timeout=1200, env=env,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{script} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def write_params(directory: Path, text: str) -> Path:
    path = directory / "params.yaml"
    path.write_text(text, encoding="utf-8")
    return path


# The text-layout check shared with the pipeline's report test: every text of every chart lies
# inside its SVG, no two texts overlap, and no title, legend or label lies over the plotted
# lines (returns one line per fault).
CHART_LAYOUT_FAULTS = """() => {
  const faults = [];
  const inside = (a, b) => a.left >= b.left - 0.5 && a.right <= b.right + 0.5 &&
                           a.top >= b.top - 0.5 && a.bottom <= b.bottom + 0.5;
  const meet = (a, b) => a.left < b.right - 0.5 && b.left < a.right - 0.5 &&
                         a.top < b.bottom - 0.5 && b.top < a.bottom - 0.5;
  for (const svg of document.querySelectorAll('svg.chart')) {
    const name = svg.getAttribute('aria-label');
    const box = svg.getBoundingClientRect();
    const texts = Array.from(svg.querySelectorAll('text'));
    const boxes = texts.map(t => t.getBoundingClientRect());
    const marks = Array.from(svg.querySelectorAll('polyline, circle'))
      .map(m => m.getBoundingClientRect());
    texts.forEach((t, i) => {
      if (!inside(boxes[i], box)) faults.push(`${name}: "${t.textContent}" is clipped`);
      for (let j = i + 1; j < texts.length; j++)
        if (meet(boxes[i], boxes[j]))
          faults.push(`${name}: "${t.textContent}" overlaps "${texts[j].textContent}"`);
      if (!t.classList.contains('tick') && marks.some(m => meet(boxes[i], m)))
        faults.push(`${name}: "${t.textContent}" lies over the plotted lines`);
    });
  }
  return faults;
}"""


def launch_chromium(playwright):
    """Headless Debian Chromium for the page tests: no sandbox (root), no GPU, no network
    chatter of its own."""
    return playwright.chromium.launch(
        executable_path=CHROMIUM, headless=True,
        args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-extensions", "--no-first-run"])
