"""Fetch the JavaScript the static book needs, from the npm registry, so no page uses a CDN.

The rendered pages show ipywidgets without a kernel: the widget state is embedded in each page and
the html-manager of @jupyter-widgets draws it. We serve that manager, RequireJS (which loads it) and
MathJax (the equations) from the book's own ``_static/vendor/`` folder instead of a CDN, so the book
works offline and keeps working if a CDN changes. Each tarball is checked against the integrity
hash npm publishes for it.

    python book/tools/fetch_vendor_js.py      # idempotent; `make book` runs it
"""
from __future__ import annotations

import base64
import hashlib
import io
import sys
import tarfile
import urllib.request
from pathlib import Path

TARGET = Path(__file__).resolve().parents[1] / "_static" / "vendor"
PACKAGES = (
    # (tarball, sha512 integrity from `npm view NAME@VERSION dist.integrity`, {path in tarball: saved as})
    (
        "https://registry.npmjs.org/@jupyter-widgets/html-manager/-/html-manager-1.0.15.tgz",
        "5thBIV6ymNgmPVOHvzx+gGy8ZSKmSazhtGw4/c4xJDVzRhG9PTeQsRjF3FUTopvFi//SABeNz1yp47bCrJ3CQA==",
        {"package/dist/embed-amd.js": "embed-amd.js"},
    ),
    (
        "https://registry.npmjs.org/requirejs/-/requirejs-2.3.8.tgz",
        "7/cTSLOdYkNBNJcDMWf+luFvMriVm7eYxp4BcFCsAX0wF421Vyce5SXP17c+Jd5otXKGNehIonFlyQXSowL6Mw==",
        {"package/require.js": "require.js"},
    ),
    (
        "https://registry.npmjs.org/mathjax/-/mathjax-3.2.2.tgz",
        "Bt+SSVU8eBG27zChVewOicYs7Xsdt40qm4+UpHyX7k0/O9NliPc+x77k1/FEsPsjKPZGJvtRZM1vO+geW0OhGw==",
        # MathJax finds its fonts relative to its own script, so the folder layout is kept.
        {"package/es5/tex-mml-chtml.js": "mathjax/tex-mml-chtml.js", "package/es5/output/chtml/fonts/woff-v2/": "mathjax/output/chtml/fonts/woff-v2/"},
    ),
)


def main() -> int:
    for url, integrity, members in PACKAGES:
        if all((TARGET / saved).exists() for saved in members.values()):
            continue
        with urllib.request.urlopen(url, timeout=120) as response:
            payload = response.read()
        digest = base64.b64encode(hashlib.sha512(payload).digest()).decode()
        if digest != integrity:
            print(f"integrity check failed for {url}", file=sys.stderr)
            return 1
        with tarfile.open(fileobj=io.BytesIO(payload)) as archive:
            for entry in archive.getmembers():
                for source, saved in members.items():
                    if entry.isfile() and (entry.name == source or (source.endswith("/") and entry.name.startswith(source))):
                        destination = TARGET / (saved + entry.name[len(source):] if source.endswith("/") else saved)
                        destination.parent.mkdir(parents=True, exist_ok=True)
                        destination.write_bytes(archive.extractfile(entry).read())
        print(f"fetched {', '.join(members.values())} from {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
