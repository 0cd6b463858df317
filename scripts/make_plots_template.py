"""Rebuild vendor/vega/plots-template.html: DVC's plots page with Vega, Vega-Lite and
vega-embed inlined, so that `dvc plots show` and `dvc plots diff` draw with no network
(.dvc/config's `plots.html_template` points at it). The versions are those dvc-render loads from
its CDN; the packages come from npm:

    cd /tmp && npm pack vega@5.20.2 vega-lite@5.2.0 vega-embed@6.18.2
    python scripts/make_plots_template.py --packages /tmp
"""

import argparse
import tarfile
from pathlib import Path

PACKAGES = (("vega", "5.20.2", "build/vega.min.js"),
            ("vega-lite", "5.2.0", "build/vega-lite.min.js"),
            ("vega-embed", "6.18.2", "build/vega-embed.min.js"))

# dvc-render fills {plot_divs} and {refresh_tag}; with no {scripts} placeholder it adds no CDN
# <script> tags.
PAGE = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    {{refresh_tag}}
    <title>DVC Plot</title>
{scripts}
    <style>
        table {{ border-spacing: 15px; }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--packages", type=Path, required=True, help="folder of the npm .tgz files")
    cli.add_argument("--out", type=Path, default=Path("vendor/vega/plots-template.html"))
    args = cli.parse_args()
    scripts = []
    for name, version, member in PACKAGES:
        with tarfile.open(args.packages / f"{name}-{version}.tgz") as archive:
            code = archive.extractfile(f"package/{member}").read().decode("utf-8")
            licence = archive.extractfile("package/LICENSE").read().decode("utf-8")
        if "</script" in code or "{plot_divs}" in code or "{refresh_tag}" in code:
            raise SystemExit(f"{name}: cannot be inlined as it is")
        scripts.append(f"    <!-- {name} {version} (npm), BSD-3-Clause:\n{licence.strip()}\n"
                       f"    -->\n    <script>{code}</script>")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(PAGE.format(scripts="\n".join(scripts)), encoding="utf-8")
    print(f"{args.out}: {args.out.stat().st_size / 1e3:.0f} kB")


if __name__ == "__main__":
    main()
