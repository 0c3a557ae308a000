"""Screenshots of the FiftyOne App showing SAM tracks, for docs/ and README.

Builds the demo dataset (offline emulator unless FAL_KEY is set), starts the App server on
127.0.0.1 and takes headless Chromium screenshots of the grid and of the sample modal with
its masks drawn. Needs Debian's `chromium` (apt-get install -y chromium).

    python scripts/app_screenshot.py [--out docs] [--frames 96]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")

DATASET = "sam31-screenshot"
# Flags that keep headless Chromium from reaching for the network (none is available).
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not come up")


def shoot(browser: str, url: str, out: Path, budget_ms: int) -> None:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1400,900",
                        f"--virtual-time-budget={budget_ms}", f"--screenshot={out}", url],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=180)
    print(f"wrote {out}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--frames", type=int, default=96)
    args = parser.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if not browser:
        print("chromium not found: apt-get install -y chromium", file=sys.stderr)
        return 2

    from sam_backend.fiftyone_io import demo

    work = Path(tempfile.mkdtemp(prefix="sam31_shot_"))
    demo.main(["--dataset", DATASET, "--frames", str(args.frames), "--out", str(work)])
    import fiftyone as fo

    dataset = fo.load_dataset(DATASET)
    sample_id = dataset.first().id
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "fiftyone.server.main", "--address", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(f"{base}/fiftyone")
        args.out.mkdir(parents=True, exist_ok=True)
        shoot(browser, f"{base}/datasets/{DATASET}", args.out / "app-grid.png", 20000)
        shoot(browser, f"{base}/datasets/{DATASET}?id={sample_id}", args.out / "app-sample.png", 25000)
    finally:
        server.terminate()
        server.wait(timeout=20)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
