"""Write requirements.lock: every package `pip install ".[test,slurm]"` resolves to here, pinned (name==version).

`make` installs with it as a constraints file (`pip install -c requirements.lock`), so a fresh environment
gets exactly these versions (finished runs are keyed on the torch, timm and numpy versions); pyproject.toml
keeps the ranges for whoever installs dyn as a library. Run `make lock` to move the pins forward, then run
the suite. Pins of packages a platform does not install (nvidia-*, triton) are ignored there.
"""
from __future__ import annotations

import datetime
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXTRAS = "test,slurm"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                        "--report", str(report), f"{REPO}[{EXTRAS}]"], check=True)
        installed = json.loads(report.read_text())["install"]
    pins = sorted((item["metadata"]["name"].lower(), item["metadata"]["version"]) for item in installed
                  if item["metadata"]["name"].lower() != "dyn")
    today = datetime.date.today().isoformat()
    header = [f"# pip's resolution of dyn[{EXTRAS}] on {today}: Python {platform.python_version()}, "
              f"{platform.system()} {platform.machine()}.", "# Written by `make lock` (tools/lock.py); "
              "`make` installs with it as constraints (pip install -c requirements.lock)."]
    (REPO / "requirements.lock").write_text("\n".join(header + [f"{name}=={version}" for name, version in pins]) + "\n")
    print(f"requirements.lock: {len(pins)} packages")


if __name__ == "__main__":
    main()
