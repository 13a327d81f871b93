"""Screenshots of real runs' HTML reports in headless Chromium (issue 22): the top of each page
(summary, then the first figures) as a compressed PNG, for docs/screenshots/.

    python benchmarks/report_screenshots.py demo=runs/demo-... transfer=runs/idrid-transfer-real-... \
        vessels=runs/drive-vessels-... [--out docs/screenshots] [--height 2400]

Each run's report is (re)built first with ``retinassl report`` when it has none. Only reports of
public datasets (the synthetic demo, IDRiD, DRIVE/STARE) belong in the repository: a report of
patients' photographs stays in its run directory.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")
BIN = Path(sys.executable).parent / "retinassl"


def screenshot(page: Path, target: Path, width: int, height: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        shot = Path(tmp) / "shot.png"
        subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        "--no-first-run", f"--user-data-dir={tmp}/profile", f"--screenshot={shot}",
                        f"--window-size={width},{height}", "--virtual-time-budget=10000", page.as_uri()],
                       check=True, capture_output=True, timeout=180)
        with Image.open(shot) as image:
            image.convert("RGB").quantize(colors=256).save(target, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="name=RUN_DIRECTORY")
    parser.add_argument("--out", type=Path, default=Path("docs/screenshots"))
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=2400)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for item in args.runs:
        name, run = item.split("=", 1)
        page = Path(run).resolve() / "report" / "index.html"
        if not page.is_file():
            subprocess.run([str(BIN), "report", run], check=True)
        target = args.out / f"report-{name}.png"
        screenshot(page, target, args.width, args.height)
        print(f"{target}: {page}")


if __name__ == "__main__":
    main()
