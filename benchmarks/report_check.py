"""Render the HTML report in a real browser and check that every plot and link resolves.

    python benchmarks/report_check.py [--runs runs] [--out report] [--screenshot report.png]

Writes the report (``featpipe report``) from a runs directory, checks every ``<img src>`` and
``<a href>`` of ``index.html`` against the disk, then opens the page in headless Chromium
(Debian's ``chromium``, installed with apt-get when missing and permitted) and saves a
screenshot to look at. Chromium also reports every image it failed to load: the page carries a
script that counts images with no natural size, and Chromium prints the count into the DOM it
dumps. Exit status 0 when everything resolves, 1 otherwise.
"""

from __future__ import annotations

import argparse
import html.parser
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import unquote

BROWSER_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


class _Targets(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if (tag, name) in (("img", "src"), ("a", "href")) and value:
                self.found.append((tag, value))


def targets(page: Path) -> list[tuple[str, str]]:
    parser = _Targets()
    parser.feed(page.read_text())
    return parser.found


def browser() -> str | None:
    """Chromium's path, installing Debian's package first when it is missing and we may."""
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return shutil.which(name)
    if shutil.which("apt-get") and os.geteuid() == 0:
        print("installing chromium (apt-get) …", flush=True)
        install = ["apt-get", "install", "-y", "-qq", "chromium"]
        if subprocess.run(install, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
            subprocess.run(install, capture_output=True)
    return shutil.which("chromium")


def render(chromium: str, page: Path, screenshot: Path) -> int:
    """Screenshot the page; return how many of its images the browser could not load."""
    with tempfile.TemporaryDirectory() as profile:
        common = [chromium, *BROWSER_FLAGS, f"--user-data-dir={profile}"]
        shot = subprocess.run(
            [*common, f"--screenshot={screenshot}", "--window-size=1400,3000", page.as_uri()],
            capture_output=True,
            text=True,
            timeout=180,
        )
        if not screenshot.exists():
            raise SystemExit(f"chromium wrote no screenshot: {shot.stderr.strip()[-500:]}")
        probe = page.with_name("_broken_images.html")
        probe.write_text(
            page.read_text().replace(
                "</body>",
                "<script>window.onload=()=>{document.title='broken:'+[...document.images]"
                ".filter(i=>!i.complete||i.naturalWidth===0).length}</script></body>",
            )
        )
        try:
            dom = subprocess.run(
                [*common, "--dump-dom", "--virtual-time-budget=10000", probe.as_uri()],
                capture_output=True,
                text=True,
                timeout=180,
            ).stdout
        finally:
            probe.unlink()
    marker = dom.split("<title>broken:", 1)
    if len(marker) < 2:
        raise SystemExit("chromium did not run the page's image check")
    return int(marker[1].split("<", 1)[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path(os.environ.get("FEATPIPE_RUNS", "runs")))
    parser.add_argument("--out", type=Path, default=Path("report"))
    parser.add_argument("--screenshot", type=Path, default=None)
    args = parser.parse_args()
    featpipe = Path(sys.executable).with_name("featpipe")
    made = subprocess.run(
        [str(featpipe), "report", "--runs-dir", str(args.runs), "--out", str(args.out)]
    )
    if made.returncode != 0:
        return made.returncode
    page = (args.out / "index.html").resolve()
    found = targets(page)
    missing = [value for _, value in found if not (page.parent / unquote(value)).exists()]
    images = sum(tag == "img" for tag, _ in found)
    print(f"{page}: {images} images, {len(found) - images} links; {len(missing)} unresolved")
    for value in missing:
        print(f"  missing: {value}")
    chromium = browser()
    if chromium is None:
        print("chromium is not installed and cannot be installed here: skipped the browser check")
        return 1 if missing else 0
    screenshot = (args.screenshot or args.out / "screenshot.png").resolve()
    broken = render(chromium, page, screenshot)
    print(f"chromium: {broken} images failed to load; screenshot {screenshot}")
    return 1 if missing or broken else 0


if __name__ == "__main__":
    sys.exit(main())
