"""Encoder speed: our full plan against transformers' BertModel, and what cheaper plans really save.

Writes bench/results/encoder_speed.json. Everything is measured in one run, on one batch of
32 x 128 tokens (inference, MiniLM-L6 weights): our full-plan throughput over BertModel's, and for
single-plan batches (12, 8, 6, 4 heads in all layers; 6, 4, 2 layers with all heads) the wall-time
ratio to our full plan beside the analytic FLOP ratio, and one batch whose samples each keep their own
8 heads (DHT under Thompson sampling: the head-by-head path). Configurations are timed round-robin so
drift in machine load hits them all alike; each figure is the median of the repeats.

With a random backbone (``bert-base-random``: the paper's 12 x 768 shape) the reference is a BertModel of
the same shape with random weights (speed does not depend on the weights). ``--device cuda`` times a GPU
(each call synchronised).

Usage: python bench/encoder_speed.py [--repeats N] [--backbone minilm-l6] [--batch 32] [--device cpu]
       [--output PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from dht.flops import full_forward_flops, plan_forward_flops
from dht.model import ExecutionPlan, resolve_backbone
from dht.provenance import repo_path, synchronise, write_result
from dht.training.setup import resolve_device

TOKENS = 128


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--backbone", default="minilm-l6")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--output", type=Path, default=repo_path("bench/results/encoder_speed.json"))
    args = parser.parse_args()

    from transformers import BertConfig, BertModel  # the reference; a test-only dependency of dht

    device, BATCH = resolve_device(args.device), args.batch
    backbone = resolve_backbone(args.backbone)
    ours = backbone.build(num_classes=4).eval().to(device)
    config = ours.config
    if backbone.directory is not None:
        theirs = BertModel.from_pretrained(str(backbone.directory), attn_implementation="sdpa")
    else:
        theirs = BertModel(BertConfig(vocab_size=config.vocab_size, hidden_size=config.hidden_size,
                                      num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
                                      intermediate_size=config.intermediate_size,
                                      max_position_embeddings=config.max_position, attn_implementation="sdpa"))
    theirs = theirs.eval().to(device)
    L, H = config.num_layers, config.num_heads
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, config.vocab_size, (BATCH, TOKENS), generator=g).to(device)
    mask = torch.ones(BATCH, TOKENS, dtype=torch.bool, device=device)

    plans = {f"{L}L{h}H": ExecutionPlan.first(L, H, range(h)) for h in sorted({H, 8, 6, 4}, reverse=True) if h <= H}
    plans.update({f"{d}L{H}H": ExecutionPlan.first(d, H) for d in (4, 2) if d < L})
    # DHT's case under Thompson sampling: every sample keeps its own 8 heads (the same in every layer)
    own = [torch.randperm(H, generator=g)[:min(8, H)].sort().values.tolist() for _ in range(BATCH)]
    plans[f"{L}L8H per sample"] = [ExecutionPlan.first(L, H, heads) for heads in own]
    runs = {name: (lambda p=plan: ours.run_plan(ours.embed(ids), mask, p)) for name, plan in plans.items()}
    runs["transformers"] = lambda: theirs(input_ids=ids, attention_mask=mask.long())

    times: dict[str, list[float]] = {name: [] for name in runs}
    with torch.inference_mode():
        for fn in runs.values():  # warm-up
            fn()
        for _ in range(args.repeats):
            for name, fn in runs.items():
                synchronise(device)
                started = time.perf_counter()
                fn()
                synchronise(device)
                times[name].append(time.perf_counter() - started)
    median = {name: statistics.median(values) for name, values in times.items()}
    full_name = f"{L}L{H}H"
    full_flops = full_forward_flops(config, TOKENS) - 2 * config.hidden_size * config.num_classes
    rows = []
    for name, plan in plans.items():
        per_sample = isinstance(plan, list)  # equal costs: count the first sample's plan
        plan = plan[0] if per_sample else plan
        flops = plan_forward_flops(config, plan, TOKENS, classify=False)
        rows.append({"plan": name if per_sample else plan.describe(), "layers": plan.depth,
                     "heads": len(plan.heads[0]), "heads_per_sample": per_sample,
                     "flop_ratio": round(flops / full_flops, 4),
                     "wall_ratio": round(median[name] / median[full_name], 4),
                     "seconds": round(median[name], 5)})
    result = {
        "full_throughput_ratio_vs_transformers": round(median["transformers"] / median[full_name], 4),
        "plans": rows,
        "setting": {"backbone": args.backbone, "batch": BATCH, "tokens": TOKENS, "repeats": args.repeats,
                    "mode": "inference (torch.inference_mode), float32"
                            + (", TF32 products" if device.type == "cuda" else "")},
        "seconds": {"ours_full": round(median[full_name], 5), "transformers": round(median["transformers"], 5)},
    }
    write_result(args.output, result, device)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
