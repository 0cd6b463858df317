"""How fast the HTML report opens in headless Chromium, against the same page with every image
loaded eagerly (the baseline: what the report would cost without lazy loading).

For each variant, the median of `--rounds` fresh page loads: the time until the page's script has
run (`body[data-ready]`) and until every image that started loading has finished, and how many
images were fetched.

    python benchmarks/report.py [--report reports/test/index.html] [--rounds 3]
Needs a report (`dvc repro report`) and Chromium (`/usr/bin/chromium`, or --chromium PATH).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd

LOADED = ("Array.from(document.images).filter(i => i.currentSrc || i.complete)"
          ".every(i => i.complete)")


def measure(page, url: str) -> dict[str, float]:
    fetched = []
    page.on("requestfinished", lambda request: fetched.append(request.url))
    began = time.perf_counter()
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']", timeout=120000)
    ready = time.perf_counter() - began
    page.wait_for_function(LOADED, timeout=300000)
    settled = time.perf_counter() - began
    return {"ready_s": ready, "images_settled_s": settled,
            "images_fetched": sum(u.endswith(".jpg") for u in fetched)}


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--report", default="reports/test/index.html")
    cli.add_argument("--rounds", type=int, default=3)
    cli.add_argument("--chromium", default="/usr/bin/chromium")
    args = cli.parse_args()
    from playwright.sync_api import sync_playwright

    report = Path(args.report).resolve()
    with tempfile.TemporaryDirectory() as tmp:
        eager = Path(tmp) / "report"
        shutil.copytree(report.parent, eager)
        page_html = (eager / report.name).read_text(encoding="utf-8")
        (eager / report.name).write_text(page_html.replace('loading="lazy"', 'loading="eager"'),
                                         encoding="utf-8")
        variants = {"report (lazy images)": report.as_uri(),
                    "baseline: eager images": (eager / report.name).as_uri()}
        rows = []
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=args.chromium, headless=True,
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            try:
                results: dict[str, list[dict]] = {name: [] for name in variants}
                for _ in range(args.rounds):  # alternate, so drift hits both alike
                    for name, url in variants.items():
                        context = browser.new_context(viewport={"width": 1280, "height": 1000})
                        results[name].append(measure(context.new_page(), url))
                        context.close()
            finally:
                browser.close()
        for name, runs in results.items():
            rows.append({"variant": name, **{k: statistics.median(r[k] for r in runs)
                                             for k in runs[0]}})
    table = pd.DataFrame(rows)
    studies = page_html.count('<article class="study')
    print(f"{report} ({studies} studies, {report.stat().st_size / 1e6:.1f} MB of HTML)")
    print(table.round(3).to_string(index=False))
    lazy, base = table.iloc[0], table.iloc[1]
    print(f"\nimages settled, eager / lazy = {base.images_settled_s / lazy.images_settled_s:.1f}x;"
          f" images fetched at open: {lazy.images_fetched:.0f} vs {base.images_fetched:.0f}")


if __name__ == "__main__":
    main()
