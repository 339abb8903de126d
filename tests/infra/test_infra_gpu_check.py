"""`bench/gpu_check.sh` (issue 17, item 5) is the script a lent GPU runs: its `--dry-run` runs every
part on the CPU at tiny sizes, so the code that measures the GPU path is exercised here too."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PARTS = ("vit_h16", "dedup_descriptor", "knn_graph", "kmeans", "trainer_vitl14")


def test_gpu_check_dry_run_prints_every_part(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT), "LVD_ONNX_CACHE": str(tmp_path)}
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dry-run"], capture_output=True,
                          text=True, env=env, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["dry_run"] is True and result["cuda"] is False
    for part in PARTS:
        assert result[part]["status"] == "ok", result[part]
    assert result["vit_h16"]["images_per_s"] > 0 and result["vit_h16"]["mfu"] is None  # no peak on a CPU
    assert result["dedup_descriptor"]["images_per_s"] > 0
    knn = result["knn_graph"]
    assert knn["k"] == 8 and 0.9 <= knn["recall_at_k"] <= 1.0 and knn["nprobe"] <= knn["nlist"]
    kmeans = result["kmeans"]
    assert kmeans["k"] == 16 and kmeans["seconds_per_iter"] > 0 and kmeans["objective"] > 0
    assert result["trainer_vitl14"]["step_s_median"] > 0
