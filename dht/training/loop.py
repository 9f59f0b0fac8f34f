"""The one training loop (every method plugs in through dht.training.hooks), and evaluation.

Run folder: run.json, tokenizer.json, model.safetensors, metrics.json, log.jsonl, loss.png,
checkpoint/ (for --resume; removed once the run is finished), and method.safetensors / method.json when the
method has state.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from dht.data import iterate_batches
from dht.model.tying import trainable_elements
from dht.provenance import device_name, write_atomically
from dht.training.checkpoint import (
    damaged,
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    save_model,
    split_state,
)
from dht.training.config import RunConfig, read_run_settings, run_file
from dht.training.distributed import World
from dht.training.evaluation import predict_split, split_scores
from dht.training.hooks import Method, NonFiniteError, method_type
from dht.training.lock import run_lock
from dht.training.memory import MemoryMeter
from dht.training.run_folder import (  # noqa: F401  (RunExistsError: raised by train, imported from here)
    Marks,
    RunExistsError,
    start_on_every_rank,
    stop_on_non_finite,
)
from dht.training.setup import Prepared, prepare_saved


def learning_rate(step: float, total_steps: int, peak: float, warmup_ratio: float) -> float:
    """Linear warm-up from 0 to ``peak`` over the first steps, then linear decay to 0. ``step`` is the
    optimizer steps done, or for a method that schedules by samples (``Method.schedule_by_samples``) the
    samples trained on so far in units of ``total_steps`` (so it may be fractional)."""
    warmup = int(total_steps * warmup_ratio)
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * max(0.0, (total_steps - step) / max(1, total_steps - warmup))


def make_optimizer(prepared: Prepared) -> torch.optim.AdamW:
    """AdamW over the method's parameters (the trainable ones, ``Method.optimizer_parameters``); no decay
    on biases and LayerNorm weights (BERT recipe). One parameter group per learning-rate group of the
    method (``Method.lr_group``; "" for all by default) and decay: by group name, decayed first."""
    method = prepared.method
    chosen = {id(p) for p in method.optimizer_parameters()}
    params = [(n, p) for n, p in prepared.model.named_parameters() if id(p) in chosen]
    groups: dict[tuple[str, bool], list[torch.nn.Parameter]] = {}
    for n, p in params:  # a method's learning-rate groups (Method.lr_group), each split by decay
        groups.setdefault((method.lr_group(n), p.dim() >= 2), []).append(p)
    decay = prepared.run.train.weight_decay
    ordered = sorted(groups.items(), key=lambda item: (item[0][0], not item[0][1]))
    return torch.optim.AdamW([{"params": group, "weight_decay": decay if decays else 0.0, "lr_group": name}
                              for (name, decays), group in ordered], lr=prepared.run.train.lr, fused=True)


def train(run: RunConfig, output: Path, resume: bool = False, stop_after_steps: int | None = None,
          progress: bool = True, device: str | None = None, lr: float | None = None) -> dict[str, Any] | None:
    """Train, evaluate and write the run folder; return the metrics (None if stopped early).

    stop_after_steps: stop (after checkpointing) once this many optimizer steps have run in this
    call, as an interruption would; ``resume=True`` continues from there. device: ``--device``
    (auto: the GPU when there is one); a run may be resumed on another device. The folder is locked
    while the run writes it (``run_lock``): a second run on it raises RunInUseError. A value that is not
    finite stops the run (NonFiniteError naming the step); lr: its new peak learning rate when resuming it.
    """
    output = Path(output)
    world = World.from_environment()
    try:
        with run_lock(output) if world.main else nullcontext():
            return _train(run, output, resume, stop_after_steps, progress, world.device(device), lr, world)
    finally:
        world.close()


def optimizer_params(optimizer: torch.optim.Optimizer) -> list[torch.nn.Parameter]:
    """Every parameter the optimizer updates, in its groups' order (the same on every rank)."""
    return [p for group in optimizer.param_groups for p in group["params"]]


def weights_finite(optimizer: torch.optim.Optimizer) -> bool:
    """Whether every parameter the optimizer updates is finite: their largest magnitude (inf, or NaN, when
    one is not). Frozen weights are left out: a step cannot have made them so."""
    params = [p.detach() for group in optimizer.param_groups for p in group["params"]]
    return bool(torch.isfinite(torch.nn.utils.get_total_norm(params, norm_type=math.inf)))


def _train(run: RunConfig, output: Path, resume: bool, stop_after_steps: int | None, progress: bool,
           device: str | None, lr: float | None = None, world: World | None = None) -> dict[str, Any] | None:
    world = world or World()
    prepared = start_on_every_rank(world, run, output, resume, device, lr)
    run, model, method = prepared.run, prepared.model, prepared.method
    where = method.device
    progress = progress and world.main
    optimizer = make_optimizer(prepared)
    counters = {"epoch": 0, "batch": 0, "step": 0, "seconds": 0.0, "flops": 0.0, "full_flops": 0.0,
                "flops_all_in": 0.0, "samples": 0, "world_size": world.size}
    if resume:
        counters, method_state = load_checkpoint(latest_checkpoint(output), model, optimizer, world.rank)
        method.load_state_dict(method_state)
        if world.main:
            truncate_log(output / "log.jsonl", counters["step"])
            truncate_log(output / "decisions.jsonl", counters["step"])
    method.bind_optimizer(optimizer)
    memory = MemoryMeter(where)  # from here: the model, data and optimizer are loaded
    steps_per_epoch = -(-len(prepared.train) // run.train.batch_size)
    total_steps, total_samples = steps_per_epoch * run.train.epochs, len(prepared.train) * run.train.epochs
    method.on_train_start(prepared.train.ids, prepared.train.labels, prepared.pad_id, total_steps)
    horizon = method.schedule_samples(total_samples)  # samples over which the schedule runs to 0
    world.broadcast_parameters(model)  # what the method set up (ACM's conversion) is rank 0's on every rank
    if world.distributed and not resume:  # each rank its own dropout (a resumed rank restores its own)
        torch.manual_seed(world.rank_seed(run.train.seed))
    steps_this_call = 0

    marks = Marks(saved=counters["step"] if resume else 0)

    def checkpoint() -> None:
        ranks = world.gather_objects(rng_state()) if world.distributed else None  # each rank's dropout draws
        if world.main:  # every rank holds the same weights, optimizer and method state
            save_checkpoint(output / "checkpoint", model, optimizer, counters, method.state_dict(), ranks)
        marks.saved = counters["step"]

    records = (lambda name: open(output / name, "a", encoding="utf-8")) if world.main else \
        (lambda name: open(os.devnull, "w", encoding="utf-8"))
    with records("log.jsonl") as log, records("decisions.jsonl") as decisions:
        while counters["epoch"] < run.train.epochs:
            epoch = counters["epoch"]
            # The clock runs from here to each step's end: it includes the method's work between steps
            # (DHT's S1 probes, queueing and arm features), not checkpoint writing.
            mark = time.perf_counter()
            if counters["batch"] == 0:
                method.on_epoch_start(epoch, prepared.train.ids, prepared.pad_id)
            model.train()
            generator = torch.Generator().manual_seed(run.train.seed * 1000 + epoch)
            batches = iterate_batches(prepared.train.ids, prepared.train.labels, run.train.batch_size,
                                      prepared.pad_id, shuffle=True, generator=generator, sort_by_length=True,
                                      start_batch=method.loader_start(counters["batch"]))
            if not method.shards_itself:  # under torchrun each rank trains on its shard of the global batch
                batches = (world.shard(batch) for batch in batches)
            batches = (batch.to(where) for batch in batches)
            # The bar counts samples: DHT's queues release more batches than the loader makes.
            done = min(max(counters["samples"] - epoch * len(prepared.train), 0), len(prepared.train))
            bar = tqdm(total=len(prepared.train), initial=done, unit="sample", disable=not progress,
                       desc=f"epoch {epoch + 1}/{run.train.epochs}", mininterval=1.0, dynamic_ncols=True)
            with stop_on_non_finite(output, lambda: counters["step"] + 1, marks, method.lr_flag, world.main):
                for batch in method.training_batches(batches):
                    position = (counters["samples"] * total_steps / horizon if method.schedule_by_samples
                                else counters["step"])
                    lr = learning_rate(position, total_steps, method.peak_lr(), run.train.warmup_ratio)
                    result = method.training_step(batch)  # on ``where``: moved above, or collated there by DHT
                    optimizer.zero_grad(set_to_none=True)
                    result.loss.backward()
                    method.after_backward()
                    loss = result.loss.item()  # on a GPU this waits for the step, so the clock sees all of it
                    local = samples = len(batch) if result.shard is None else result.shard  # this rank's samples
                    if world.distributed:  # the global batch's samples, mean loss and FLOPs (summed over shards)
                        costs = [] if result.shard is not None else [result.flops, result.full_flops, result.all_in]
                        total = world.sum([local, loss * local, *costs])
                        samples, loss = int(total[0]), total[1] / total[0]
                        if costs:
                            result.flops, result.full_flops, result.flops_all_in = total[2:]
                    world.average_gradients(optimizer_params(optimizer), local, samples)
                    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), run.train.max_grad_norm)
                    if not (math.isfinite(loss) and math.isfinite(norm.item())):
                        raise NonFiniteError(f"the loss ({loss}) or the gradient norm ({norm.item()}) is not "
                                             "finite, so training stopped before applying it")
                    marks.good = counters["step"]  # the weights this step started from gave a finite loss
                    for group in optimizer.param_groups:  # a method may scale a group's rate (after_backward)
                        group["lr"] = method.group_lr(group.get("lr_group", ""), lr) * group.get("lr_scale", 1.0)
                    optimizer.step()
                    if not weights_finite(optimizer):  # what the next step would read; nothing of it is saved
                        raise NonFiniteError("the weights are not finite after this step's update")
                    now = time.perf_counter()
                    seconds, mark = now - mark, now
                    counters.update(batch=counters["batch"] + 1, step=counters["step"] + 1,
                                    seconds=counters["seconds"] + seconds, flops=counters["flops"] + result.flops,
                                    full_flops=counters["full_flops"] + result.full_flops,
                                    flops_all_in=counters["flops_all_in"] + result.all_in,
                                    samples=counters["samples"] + samples)
                    record = {"epoch": epoch, "step": counters["step"], "loss": loss, "lr": lr,
                              "samples": samples, "seconds": seconds, "flop_ratio": result.flops / result.full_flops,
                              **result.extra}
                    log.write(json.dumps(record) + "\n")
                    for decision in result.records:
                        decisions.write(json.dumps({"epoch": epoch, "step": counters["step"], **decision}) + "\n")
                    bar.update(samples)
                    bar.set_postfix(loss=f"{loss:.3f}", samples_per_s=f"{samples / seconds:.1f}")
                    steps_this_call += 1
                    stop = stop_after_steps is not None and steps_this_call >= stop_after_steps
                    if stop or counters["step"] % run.train.checkpoint_every == 0:
                        log.flush()
                        decisions.flush()
                        checkpoint()
                        mark = time.perf_counter()
                    if stop:
                        bar.close()
                        return None
            bar.close()
            counters.update(epoch=epoch + 1, batch=0)
            log.flush()
            decisions.flush()
            checkpoint()
    if not world.main:  # rank 0 evaluates and writes the finished run
        return None
    method.world = World()  # alone from here: no collective may wait for ranks that are done
    with stop_on_non_finite(output, lambda: None, marks, method.lr_flag):
        method.on_train_end(prepared.train.ids, prepared.train.labels, prepared.pad_id)
        counters["memory"] = memory.report()
        return finish(prepared, output, counters, progress)


def truncate_log(path: Path, step: int) -> None:
    """Drop log records written after the checkpoint being resumed from (they will be redone), and a last
    line a kill cut short; rewritten whole or not at all."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # the line being appended when the run was killed
                break
            raise ValueError(f"{path}, line {number}: not a JSON record") from None
        if record["step"] <= step:
            kept.append(line)
    write_atomically(path, "".join(kept))


def finish(prepared: Prepared, output: Path, counters: dict[str, Any], progress: bool) -> dict[str, Any]:
    """Evaluate on the test split and write model, method state, metrics and the loss plot."""
    from dht.training.plots import plot_loss

    run = prepared.run
    test = evaluate(prepared, progress)
    extra_flops, extra_seconds = prepared.method.extra_training_cost()  # ACM's conversion
    metrics = {
        "method": run.method, "dataset": prepared.dataset.name, "backbone": run.backbone,
        "options": run.options,
        "test": test,
        "train": {"flop_ratio": counters["flops"] / counters["full_flops"],
                  "flop_ratio_all_in": (counters["flops_all_in"] + extra_flops) / counters["full_flops"],
                  "seconds": counters["seconds"], "seconds_all_in": counters["seconds"] + extra_seconds,
                  "samples": counters["samples"], "epochs": run.train.epochs,
                  "steps": counters["step"], "device": device_name(prepared.method.device),
                  "memory": counters.get("memory", {}),
                  "trainable_params": trainable_elements(prepared.model)},
    }
    metrics.update(prepared.method.report(output))
    save_model(output / "model.safetensors", prepared.model)
    save_method_state(output, prepared.method)
    write_atomically(output / "metrics.json", json.dumps(metrics, indent=1))  # it marks the run finished
    # A finished run cannot be resumed: its checkpoint (weights and optimizer moments, twice the model's
    # size) is dead weight. A stop before this line leaves it, also harmless.
    for name in ("checkpoint", "checkpoint.old"):
        shutil.rmtree(output / name, ignore_errors=True)
    plot_loss(output / "log.jsonl", output / "loss.png")
    if not (output / "decisions.jsonl").stat().st_size:
        (output / "decisions.jsonl").unlink()  # methods without per-sample decisions
    return metrics


def save_method_state(output: Path, method: Method) -> None:
    """Write the method's own state (bandits, normalisers) beside the model, if it has any."""
    from safetensors.torch import save_file

    state = method.state_dict()
    if not state:
        return
    tensors: dict[str, torch.Tensor] = {}
    (output / "method.json").write_text(json.dumps(split_state(state, "method", tensors), indent=1), encoding="utf-8")
    save_file(tensors, str(output / "method.safetensors"))


def evaluate(prepared: Prepared, progress: bool = False) -> dict[str, Any]:
    """Predict the test split (batches sorted by length) and score it; seconds are wall time."""
    split = prepared.test
    prepared.method.statistics()  # drop what earlier predictions (a budget search) left
    result = predict_split(prepared.method, split.ids, split.labels, prepared.run.train.eval_batch_size,
                           prepared.pad_id, progress)
    return {**split_scores(result, split.labels, prepared.dataset.num_classes),
            **prepared.method.statistics(), "device": device_name(prepared.method.device)}


def load_run(run_dir: Path, data: str | None = None, overrides: dict | None = None,
             device: str | None = None) -> Prepared:
    """Rebuild a finished run (model and method state) on ``device`` with its data, for evaluation, with
    inference ``overrides``."""
    return prepare_saved(run_dir, data, overrides, device)


def evaluate_run(run_dir: Path, data: str | None = None, progress: bool = True,
                 overrides: dict | None = None, device: str | None = None, budget: float | None = None,
                 oracle: bool = False, output: Path | None = None) -> dict[str, Any]:
    """Re-evaluate a saved run on its test split (or another dataset folder's); write ``output``
    (default: RUN/evaluation.json).

    budget: a target inference FLOP ratio (all-in); the method's knob is first set to meet it on
    training rows (``budget_search``), and the value found is reported. oracle: add the two oracle
    routers' scores (``oracle_scores``); on the run's own test split they also go into its metrics.json.
    """
    from dht.training.operating import budget_search, check_operating, oracle_scores

    if run_file(run_dir).is_file():
        settings = read_run_settings(run_dir)
        check_operating(method_type(settings.method), overrides, budget, oracle, settings.options)
    metrics_file = run_dir / "metrics.json"
    keep_oracle = oracle and data is None and budget is None and not overrides
    if keep_oracle:  # read before the work: a damaged file is named at once, not after the oracles ran
        with damaged(metrics_file):
            metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
    prepared = load_run(run_dir, data, overrides, device)
    found = budget_search(prepared, budget) if budget is not None else None
    result: dict[str, Any] = {"run": str(run_dir), "method": prepared.run.method, "dataset": prepared.dataset.name,
                              "options": prepared.method.options.to_dict(), "test": evaluate(prepared, progress)}
    if found is not None:
        result["budget"] = found
    if oracle:
        result["test"]["oracle"] = oracle_scores(prepared)
        if keep_oracle:
            metrics["test"]["oracle"] = result["test"]["oracle"]
            write_atomically(metrics_file, json.dumps(metrics, indent=1))
    (output or run_dir / "evaluation.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    return result
