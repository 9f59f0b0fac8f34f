"""The accuracy-for-cost front of BL1, FastBERT and a DHT preset, per seed, from their knobs and oracles.

For each seed: trains BL1, FastBERT on it, and the DHT preset (a finished run is reused; ``--preset none``:
no DHT), then evaluates FastBERT at each ``--speeds`` value and DHT at each ``--cost-weights`` value (the
knob of ``dht evaluate --budget``, set directly here so every run gets the same points), and scores DHT's
two oracle routers. Rows are written after every seed, so an interrupted sweep keeps what it finished.

Usage: python bench/front_sweep.py --seeds 0 1 2 [--backbone B] [--device D] [--runs runs/front]
       [--output bench/results/ag_news/front_sweep.json] [--max-train N] [--max-test N] [--epochs E]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import dht.methods  # noqa: F401  (registers the methods)
from dht.provenance import repo_path, write_result
from dht.training.config import RunConfig, TrainConfig
from dht.training.loop import evaluate, load_run, train
from dht.training.operating import oracle_scores
from dht.training.setup import resolve_device

SPEEDS = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
COST_WEIGHTS = [-5.0, -1.0, 0.0, 0.25, 0.5, 1.0, 2.0, 5.0, 20.0]


def trained(run: RunConfig, folder: Path, device: str) -> dict[str, Any]:
    """The run's metrics, training it first unless it finished already."""
    if not (folder / "metrics.json").is_file():
        train(run, folder, resume=(folder / "checkpoint" / "state.json").is_file(), progress=False, device=device)
    return json.loads((folder / "metrics.json").read_text(encoding="utf-8"))


def row(seed: int, method: str, config: str, knob: str | None, value: float | None, test: dict,
        metrics: dict) -> dict[str, Any]:
    return {"seed": seed, "method": method, "config": config, "knob": knob, "value": value,
            "f1_macro": test["f1_macro"], "accuracy": test["accuracy"], "test_flop_ratio": test["flop_ratio"],
            "test_flop_ratio_all_in": test.get("flop_ratio_all_in", test["flop_ratio"]),
            "train_flop_ratio_all_in": metrics["train"]["flop_ratio_all_in"],
            "train_seconds": metrics["train"]["seconds"], "test_seconds": test.get("seconds")}


def sweep_seed(base: RunConfig, seed: int, runs: Path, preset: str, speeds: list[float],
               weights: list[float], device: str, dht_epochs: int | None = None) -> list[dict[str, Any]]:
    """Train (or reuse) BL1, FastBERT and DHT with ``seed`` (DHT for ``dht_epochs`` if given); evaluate
    their knobs and DHT's oracles."""
    config = TrainConfig(**{**base.train.__dict__, "seed": seed})
    dht_config = TrainConfig(**{**config.__dict__, "epochs": dht_epochs or config.epochs})
    folder = runs / f"seed{seed}"
    bl1 = trained(RunConfig(method="full", data=base.data, backbone=base.backbone, train=config),
                  folder / "full", device)
    rows = [row(seed, "full", "full", None, None, bl1["test"], bl1)]
    fastbert = trained(RunConfig(method="fastbert", data=base.data, backbone=base.backbone, train=config,
                                 options={"teacher": str(folder / "full")}), folder / "fastbert", device)
    curves = [("fastbert", fastbert, "speed", speeds)]
    dht_name = preset if dht_epochs is None else f"{preset}-{dht_epochs}ep"
    if preset != "none":
        dht_run = trained(RunConfig(method="dht", data=base.data, backbone=base.backbone, train=dht_config,
                                    options={"config": preset}), folder / dht_name, device)
        curves.append((dht_name, dht_run, "cost_weight", weights))
    for name, metrics, knob, values in curves:
        prepared = load_run(folder / name, device=device)
        for value in values:
            prepared.method.set_inference_options(**{knob: value})
            rows.append(row(seed, metrics["method"], name, knob, value, evaluate(prepared), metrics))
        if name == dht_name:
            prepared.method.set_inference_options(cost_weight=0.0)
            oracle = oracle_scores(prepared)
            for kind in ("oracle_correct", "oracle_agrees_with_full"):
                rows.append(row(seed, "dht", dht_name, kind, None, oracle[kind], metrics))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--preset", default="f-dht", help="the DHT preset; none: BL1 and FastBERT only")
    parser.add_argument("--backbone", default="minilm-l6")
    parser.add_argument("--data", default="")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--dht-epochs", type=int, default=None, help="DHT's epochs (default: --epochs)")
    parser.add_argument("--max-train", type=int, default=None)
    parser.add_argument("--max-test", type=int, default=None)
    parser.add_argument("--speeds", type=float, nargs="+", default=SPEEDS)
    parser.add_argument("--cost-weights", type=float, nargs="+", default=COST_WEIGHTS)
    parser.add_argument("--runs", type=Path, default=Path("runs/front"))
    parser.add_argument("--output", type=Path, default=repo_path("bench/results/ag_news/front_sweep.json"))
    args = parser.parse_args()
    base = RunConfig(data=args.data, backbone=args.backbone,
                     train=TrainConfig(epochs=args.epochs, max_train=args.max_train, max_test=args.max_test))
    rows: list[dict[str, Any]] = []
    for seed in args.seeds:
        rows += sweep_seed(base, seed, args.runs, args.preset, args.speeds, args.cost_weights, args.device,
                           args.dht_epochs)
        write_result(args.output, rows, resolve_device(args.device))
        print(f"seed {seed}: {len(rows)} rows so far", flush=True)


if __name__ == "__main__":
    main()
