"""bench/gpu/checks.sh, the one device call that runs what needs a GPU, run here on the CPU
(DEVICE=cpu BACKBONE=tiny): every step ends and leaves its file, so the script works when a GPU is lent."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_gpu_checks_run_every_step_and_leave_every_file(tmp_path):
    env = {**os.environ, "DEVICE": "cpu", "BACKBONE": "tiny", "MAX_TRAIN": "64", "MAX_TEST": "64", "PY": sys.executable,
           "OUT": str(tmp_path)}
    done = subprocess.run(["bash", str(ROOT / "bench/gpu/checks.sh")], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "bench_paths-graphs.json", "ddp_scaling-gpu.json", "gpu.txt", "gpu_tests.txt", "log.txt",
        "metrics-bl1.json", "metrics-tinv.json"]
    assert "passed" in (tmp_path / "gpu_tests.txt").read_text()
    modes = json.loads((tmp_path / "bench_paths-graphs.json").read_text())["result"]["modes"]
    assert [row["mode"] for row in modes] == ["eager", "buckets"]  # graphs only on CUDA
    scaling = json.loads((tmp_path / "ddp_scaling-gpu.json").read_text())["result"]
    assert [row["ranks"] for row in scaling["rows"]] == [1]  # one per GPU; a CPU counts as one
    assert json.loads((tmp_path / "metrics-tinv.json").read_text())["method"] == "tinv"
