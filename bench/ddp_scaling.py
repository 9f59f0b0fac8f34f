"""Data-parallel scaling: training samples per second with 1, 2, ... ranks under torchrun.

For each number of ranks R, trains the same run (BL1 by default, the same samples, one epoch) with
``torchrun --standalone --nproc-per-node R -m dht train ...`` and reads rank 0's training clock from the
run's metrics.json (the loop's seconds: steps, the gradients' all-reduce included; not start-up nor the
final evaluation). On a CPU each rank gets ``cores // R`` threads, so R ranks share the same cores one
process had: what is measured is the cost of splitting the work, not more hardware. On a GPU machine
each rank takes its own GPU (``--device cuda``; NCCL).

Usage: python bench/ddp_scaling.py [--ranks 1 2] [--method full] [--max-train 1024] [--device cpu]
       [--backbone minilm-l6] [--output bench/results/ddp_scaling.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dht.provenance import repo_path, write_result


def train_once(ranks: int, args: argparse.Namespace, folder: Path) -> dict:
    """One training under torchrun with ``ranks`` processes; its samples per second (rank 0's clock)."""
    cores = os.cpu_count() or 1
    threads = max(1, cores // ranks) if args.device == "cpu" else 1
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    output = folder / f"ranks{ranks}"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
               "-m", "dht", "train", "--method", args.method, "--backbone", args.backbone,
               "--max-train", str(args.max_train), "--max-test", "64", "--epochs", "1",
               "--batch-size", str(args.batch_size), "--device", args.device, "--output", str(output), "--quiet"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{ranks} rank(s) failed:\n{done.stderr[-3000:]}")
    train = json.loads((output / "metrics.json").read_text())["train"]
    return {"ranks": ranks, "threads_per_rank": threads, "samples": train["samples"],
            "train_seconds": train["seconds"], "samples_per_second": train["samples"] / train["seconds"],
            "command_seconds": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--method", default="full")
    parser.add_argument("--backbone", default="minilm-l6")
    parser.add_argument("--max-train", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", type=Path, default=repo_path("bench/results/ddp_scaling.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        rows = [train_once(ranks, args, Path(folder)) for ranks in args.ranks]
    base = rows[0]["samples_per_second"]
    for row in rows:
        row["speed_up"] = row["samples_per_second"] / base
    result = {"method": args.method, "backbone": args.backbone, "max_train": args.max_train,
              "batch_size": args.batch_size, "device": args.device, "rows": rows}
    write_result(args.output, result, args.device)
    for row in rows:
        print(f"{row['ranks']} rank(s) x {row['threads_per_rank']} thread(s): {row['samples_per_second']:.1f} "
              f"samples/s ({row['speed_up']:.2f}x), {row['train_seconds']:.1f} s training")


if __name__ == "__main__":
    main()
