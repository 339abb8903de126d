"""Shared bench helpers: JSON output, peak memory of a child process, the demo world cache."""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SCRATCH = Path(__file__).resolve().parent / "scratch"


def parser(name: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"bench_{name}", description=description)
    p.add_argument("--out", default=str(SCRATCH / f"{name}.json"), help="JSON result file")
    return p


def machine() -> dict[str, Any]:
    return {"cpus": len(os.sched_getaffinity(0)), "python": platform.python_version(), "machine": platform.machine()}


def write_result(path: str | Path, result: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine(), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **result}
    path.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(json.dumps(result, indent=2, sort_keys=True))


def world(size: str, seed: int = 0) -> Path:
    """The demo world of that size, built once under bench/scratch."""
    from curation.demo.world import build_world, world_is_built

    root = SCRATCH / f"world-{size}-{seed}"
    if not world_is_built(root, size, seed):
        build_world(root, size, seed)
    return root


def run_measured(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run a command; wall seconds and the peak RSS (MiB) of its process tree, polled every 50 ms
    (getrusage's children maximum would carry over from an earlier, larger child)."""
    import tempfile
    
    import psutil

    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env={**os.environ, **(env or {})})
        peak = 0
        root = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                rss = root.memory_info().rss + sum(c.memory_info().rss for c in root.children(recursive=True))
                peak = max(peak, rss)
            except psutil.Error:
                pass
            time.sleep(0.05)
        seconds = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{stderr[-3000:]}")
    return {"seconds": round(seconds, 3), "peak_rss_mib": round(peak / 2**20, 1), "stdout": stdout}


def python() -> str:
    return sys.executable


def add_phase_arguments(p: argparse.ArgumentParser) -> None:
    """The hidden flags by which a benchmark re-runs itself for one phase in a fresh process."""
    p.add_argument("--phase", help=argparse.SUPPRESS)
    p.add_argument("--run", help=argparse.SUPPRESS)


def run_phase(module: str, name: str, root: Path) -> dict[str, Any]:
    """`python -m <module> --phase <name> --run <root>` in a fresh process (so its peak memory is
    its own); the JSON object it prints last."""
    proc = subprocess.run([sys.executable, "-m", module, "--phase", name, "--run", str(root)], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
