"""What the benchmarks share: where the repository and the photos are, and timing a dlibplus command."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def faces_root() -> Path:
    """The labelled photo sets: ``$DLIBPLUS_FACES``, else ``../shared/data/faces`` beside the checkout."""
    env = os.environ.get("DLIBPLUS_FACES")
    return Path(env) if env else REPO.parent / "shared" / "data" / "faces"


def run_dlibplus(args: list[str], cache: Path) -> tuple[float, subprocess.CompletedProcess, list[str]]:
    """Run ``python -m dlibplus.cli ARGS`` from the repository with ``DLIBPLUS_CACHE=cache``.

    Returns its wall seconds, the finished process (stdout and stderr captured as text) and the full
    command. Ends the benchmark with the command's stderr when it fails.
    """
    cmd = [sys.executable, "-m", "dlibplus.cli", *args]
    env = {**os.environ, "DLIBPLUS_CACHE": str(cache)}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"dlibplus {args[0]} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall, proc, cmd
