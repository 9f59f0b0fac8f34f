"""``dht bench-paths RUN``: what switching paths costs a Transformer⁻¹ run (transformer_inverse.md §11).

For each execution mode (eager; ``--buckets``; with ``--compile`` also compiled on buckets; with ``--graphs``,
on a CUDA device, also replayed CUDA graphs) on the run's test split: the warm-up (capture, or first-pass,
which holds compiling) seconds, the steady-state seconds of a second pass, whether the outputs equal eager's
(largest log-probability difference, same paths), and the **switching overhead per layer**: the halting
loop's seconds (controller, exits, compaction, padding) minus those of the same samples run to their halting
depths as fixed groups through the same layer function, over the layer boundaries the batches crossed, in
μs. With ``--reference BL1`` the steady seconds are also given against BL1's, beside the FLOP ratio, in the
same process.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dht.data import Batch
from dht.data.batching import iterate_batches
from dht.methods.tinv_inference import TInvInference, compact, parse_route
from dht.model.folding import FoldedStack
from dht.model.graphs import LayerGraphs
from dht.provenance import synchronise, write_result
from dht.training.evaluation import predict_split
from dht.training.loop import evaluate, load_run
from dht.training.setup import Prepared


@torch.no_grad()
def switch_overhead(prepared: Prepared) -> dict[str, float]:
    """The halting loop against the same layer calls without the controller, batch by batch on the test
    split, with the method's current options: seconds, and μs per layer boundary the batches crossed.

    The baseline replays each batch's schedule, width group by width group: layer t runs at the group's
    width on its samples whose halting depth is above t, compacted and trimmed as the loop does, through the
    same layer function; what it lacks is the switching itself (pooling and the exit at each depth, the
    controller's step, the halting bookkeeping). With ``--graphs`` the baseline replays the same graphs, which
    hold each layer's pooling and exit too: the overhead is then the controller and the bookkeeping alone.
    The per-sample FLOP bookkeeping after the loop (``_halting_prediction``) is timed apart and left out."""
    method, split = prepared.method, prepared.test
    method.model.eval()
    folded = method.fold()
    graphs = method.layer_graphs if method.options.graphs else None
    halting, fixed, boundaries = 0.0, 0.0, 0
    for batch in iterate_batches(split.ids, split.labels, prepared.run.train.eval_batch_size, prepared.pad_id,
                                 shuffle=False, sort_by_length=True):
        batch = batch.to(method.device)
        start = time.perf_counter()
        prediction = method.halting_predict(batch, folded)
        synchronise(method.device)
        halting += time.perf_counter() - start
        paths = [parse_route(route) for route in prediction.routes]
        tokens = batch.attention_mask.sum(1).tolist()
        start = time.perf_counter()
        method._halting_prediction(prediction.logits, [d for d, _ in paths], [w for _, w in paths], tokens)
        halting -= time.perf_counter() - start
        depth_all = torch.tensor([d for d, _ in paths], device=method.device)
        width_all = torch.tensor([w for _, w in paths], device=method.device)
        start = time.perf_counter()
        chunk = graphs.max_rows if graphs is not None else len(depth_all)  # as halting_predict splits them
        for width in width_all.unique().tolist():
            for rows in (width_all == width).nonzero().squeeze(1).split(chunk):
                boundaries += _fixed_schedule(method, folded, graphs, batch, rows, depth_all[rows], width)
        synchronise(method.device)
        fixed += time.perf_counter() - start
    return {"halting_seconds": halting, "fixed_plan_seconds": fixed, "layer_boundaries": boundaries,
            "switch_overhead_us_per_layer": (halting - fixed) / boundaries * 1e6 if boundaries else None}


def _fixed_schedule(method: TInvInference, folded: FoldedStack, graphs: LayerGraphs | None, batch: Batch,
                    rows: Tensor, depth: Tensor, width: int) -> int:
    """``rows`` of ``batch`` run to their halting ``depth`` (n,) through the layers alone, compacted and
    trimmed as the halting loop does; returns the layer boundaries the deepest crossed."""
    deepest = int(depth.max())
    mask = batch.attention_mask[rows].bool()
    T = int(mask.sum(1).max())
    h, mask = method.model.embed(batch.input_ids[rows, :T]), mask[:, :T]
    if graphs is not None:
        graphs.load(h, mask)
    for layer in range(deepest):
        if graphs is not None:
            graphs.layer(layer, width)
        else:
            h = method._run_layer(folded, h, mask, layer, width)
        keep = depth > layer + 1
        if not keep.all():
            depth = depth[keep]
            if not len(depth):
                break
            h, mask = compact(h, mask, keep, graphs)
    return deepest - 1


def bench_paths(run_dir: Path, compiled: bool = False, reference: Path | None = None, device: str | None = None,
                output: Path | None = None, graphs: bool = False,
                overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Measure every mode on ``run_dir`` (a finished tinv run, its inference options changed by
    ``overrides``); write ``output`` (default RUN/bench_paths.json) and return what was written. A ValueError
    for a run of another method, or for ``graphs`` on a device other than CUDA (before anything is measured)."""
    prepared = load_run(run_dir, overrides=overrides, device=device)
    method = prepared.method
    if prepared.run.method != "tinv":
        raise ValueError(f"{run_dir}: bench-paths measures Transformer⁻¹ runs, this one is {prepared.run.method}")
    split, size = prepared.test, prepared.run.train.eval_batch_size
    modes = [("eager", {"buckets": False, "compile": False, "graphs": False}),
             ("buckets", {"buckets": True, "compile": False, "graphs": False})]
    if compiled:
        modes.append(("compiled", {"buckets": True, "compile": True, "graphs": False}))
    if graphs:
        modes.append(("graphs", {"buckets": False, "compile": False, "graphs": True}))
        method.set_inference_options(graphs=True)  # refused here, before any pass, where there is no CUDA
        method.set_inference_options(graphs=False)
    bl1 = load_run(reference, device=device) if reference is not None else None
    rows, eager = [], None
    for name, options in modes:
        method.set_inference_options(**options)
        start = time.perf_counter()
        predict_split(method, split.ids, split.labels, size, prepared.pad_id)  # warms up (or compiles)
        first_seconds = time.perf_counter() - start
        reference_seconds = evaluate(bl1)["seconds"] if bl1 is not None else None
        steady = predict_split(method, split.ids, split.labels, size, prepared.pad_id)
        eager = eager or steady
        row = {"mode": name, **options, "warm_up_seconds": method.warm_up_seconds,
               "first_pass_seconds": first_seconds, "steady_seconds": steady.seconds,
               "flop_ratio_all_in": steady.totals[2] / steady.totals[1],
               "max_log_probability_difference_to_eager": float((steady.probabilities.log() - eager.probabilities.log())
                                                      .abs().max()),
               "same_paths_as_eager": steady.routes == eager.routes, **switch_overhead(prepared)}
        if reference_seconds is not None:
            row["bl1_seconds"] = reference_seconds
            row["wall_ratio_to_bl1"] = steady.seconds / reference_seconds
        rows.append(row)
    method.set_inference_options(buckets=False, compile=False, graphs=False)
    result = {"run": str(run_dir), "reference": None if reference is None else str(reference),
              "overrides": overrides or {}, "samples": len(split), "modes": rows}
    write_result(output or run_dir / "bench_paths.json", result, method.device)
    return result
