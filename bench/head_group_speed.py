"""Head-group speed: what a DHT head group costs when its samples keep heads of their own.

Writes bench/results/head_group_speed.json. One head group of MiniLM-L6 (layers 2-3, c = 2) runs a
training step (forward + backward, dropout on) on random batches of 32 x 50 tokens, through
``dht.search.layout.run_group`` as DHT's training loop calls it, in three cases:

- ``all heads``: every sample keeps all 12 heads (the reference);
- ``shared 10 heads``: every sample keeps the same 10 heads (one weight slice);
- ``per sample 8/10/12``: a third of the samples keep 8 heads, a third 10 and a third 12, each its own
  random set, as under exploring Thompson sampling (the head-by-head path).

For each, the wall-time ratio to ``all heads`` beside the analytic FLOP ratio (the layers' forward +
backward, ``dht.flops``). Cases are timed round-robin; each figure is the median of the repeats.

Usage: python bench/head_group_speed.py [--repeats N] [--output PATH]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from dht.flops import layer_forward_flops
from dht.model import resolve_backbone
from dht.model.encoder import kept_mask
from dht.provenance import repo_path, write_result
from dht.search.layout import run_group

BATCH, TOKENS, LAYERS = 32, 50, (2, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--output", type=Path, default=repo_path("bench/results/head_group_speed.json"))
    args = parser.parse_args()

    model = resolve_backbone("minilm-l6").build(num_classes=4).train()
    config, H = model.config, model.config.num_heads
    g = torch.Generator().manual_seed(0)
    h = torch.randn(BATCH, TOKENS, config.hidden_size, generator=g)
    mask = torch.ones(BATCH, TOKENS, dtype=torch.bool)
    own = [torch.randperm(H, generator=g)[:(8, 10, 12)[i % 3]].tolist() for i in range(BATCH)]
    cases = {"all heads": kept_mask([range(H)] * BATCH, H), "shared 10 heads": kept_mask([range(10)] * BATCH, H),
             "per sample 8/10/12": kept_mask(own, H)}

    def step(kept: torch.Tensor) -> None:
        model.zero_grad(set_to_none=True)
        states = h.clone().requires_grad_(True)
        run_group(model, states, mask, LAYERS, kept).sum().backward()

    times: dict[str, list[float]] = {name: [] for name in cases}
    for kept in cases.values():  # warm-up
        step(kept)
    for _ in range(args.repeats):
        for name, kept in cases.items():
            started = time.perf_counter()
            step(kept)
            times[name].append(time.perf_counter() - started)
    median = {name: statistics.median(values) for name, values in times.items()}

    def flops(kept: torch.Tensor) -> float:  # forward + backward of the group's layers, every sample
        per_sample = [layer_forward_flops(config, TOKENS, int(k)) for k in kept.sum(1).tolist()]
        return 3 * len(LAYERS) * sum(per_sample)

    reference = cases["all heads"]
    rows = [{"case": name, "heads_kept": round(float(kept.sum(1).float().mean()), 2),
             "flop_ratio": round(flops(kept) / flops(reference), 4),
             "wall_ratio": round(median[name] / median["all heads"], 4), "seconds": round(median[name], 5)}
            for name, kept in cases.items()]
    result = {"cases": rows,
              "setting": {"backbone": "minilm-l6", "layers": list(LAYERS), "batch": BATCH, "tokens": TOKENS,
                          "repeats": args.repeats, "mode": "training step (forward + backward, dropout on), float32"}}
    write_result(args.output, result)
    for row in rows:
        print(f"{row['case']:20} FLOPs {row['flop_ratio']:.3f}  wall {row['wall_ratio']:.3f}  "
              f"{row['seconds'] * 1000:.1f} ms")


if __name__ == "__main__":
    main()
