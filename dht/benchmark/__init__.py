"""`dht bench`: every registered method on the same data, budget and seeds, one FLOP counter and one clock.

Each method says which runs it contributes (``Method.bench_runs``): BL1 (full model), BL2 (students of 1, 3
and N_L/2 layers), BL3 (FastBERT at speeds 0.1, 0.5, 0.8), the four DHT presets and dynamic layer tying (whose
Table 1 columns of trainable parameters and peak memory are what it saves). For each seed they train into
OUTPUT/runs/FOLDER (OUTPUT/runs/seedS/FOLDER with several seeds) in registry order, BL1 first (a finished run
is not redone, once its run.json is checked to hold the settings the bench would train with; an interrupted
one is resumed); a method with a ``teacher`` option gets that seed's BL1 run, and its training cost is also
reported with the teacher's. ``methods`` keeps some methods' runs (BL1's always: it is every row's reference).
Then every run's inference is timed in one process, round-robin, each run with a knob is evaluated along its
curve and each run with routes that asks for them (``BenchRun.oracles``; of DHT's, F-DHT's and ours) gets its oracle
routers (``dht/benchmark/front.py``). Seed by seed: a seed trains, is timed and the files below are written
over the seeds timed so far before the next seed trains, so a bench stopped at any moment keeps every seed it
finished (``--train-only`` trains every seed and times none, to time later on a quiet machine). A seed's rows
are kept in its runs folder (``bench_rows.json``): a bench run again does not time that seed again, even on
another machine from the run folders without their weights (``bench/front_keep.py``). Written: the paper's
Table 1 (training) and Table 2 (inference) as markdown, ``results.json`` (a row per run and seed, through
``dht.provenance``), ``curves.json``, ``front.json`` and ``front.md`` (means over seeds), ``pareto.png``
(inference) and ``pareto_training.png``. FastBERT's speed only decides where inference exits, so its branches
are trained once and the three speeds are three evaluations of that one run (as FastBERT itself is used).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import statistics
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import dht.methods  # noqa: F401  (registers the built-in methods)
from dht.benchmark.front import front_rows, front_table, kept_points, read_train, run_points, with_teacher
from dht.benchmark.plots import plot_inference_front, plot_training_front
from dht.provenance import package_version, write_result
from dht.training.config import RunConfig, TrainConfig, read_run_settings
from dht.training.hooks import METHODS, BenchRun
from dht.training.loop import evaluate, load_run, train
from dht.training.setup import Prepared, resolve_device

QUICK = {"max_train": 1000, "max_test": 500, "epochs": 1}  # --quick: minutes on a laptop CPU
TEACHER = "full"  # the bench run that methods with a ``teacher`` option start from


def entries(num_layers: int, teacher: Path, methods: tuple[str, ...] | None = None) -> list[BenchRun]:
    """Every registered method's bench runs (only ``methods``' and BL1's when given), in registry order,
    BL1's first (it is the others' teacher and every row's reference). Raises ValueError for a name that
    is not a registered method."""
    unknown = sorted(set(methods or ()) - set(METHODS))
    if unknown:
        raise ValueError(f"--methods: {', '.join(unknown)} is not a method (registered: {', '.join(sorted(METHODS))})")
    runs = []
    for name, method in sorted(METHODS.items(), key=lambda item: item[0] != TEACHER):
        if methods and name != TEACHER and name not in methods:
            continue
        takes_teacher = any(field.name == "teacher" for field in method.Options.fields())
        for bench in method.bench_runs(num_layers):
            options = {"teacher": str(teacher), **bench.options} if takes_teacher else bench.options
            runs.append(replace(bench, method=name, options=options))
    return runs


NOT_TRAINING = ("eval_batch_size", "checkpoint_every")  # settings a trained run does not depend on


def settings_differ(folder: Path, run: RunConfig) -> str | None:
    """The first training setting in which the run saved in ``folder`` differs from ``run`` (None when
    none does): method, data, backbone, each training setting, then the method's training options with
    their defaults filled in (a run saved before an option existed holds its default). Options evaluation
    may change (``inference``) and a teacher's path (each seed's own BL1) are not compared."""
    saved = read_run_settings(folder)
    for name in ("method", "data", "backbone"):
        if getattr(saved, name) != getattr(run, name):
            return f"{name} {getattr(saved, name)!r}, not {getattr(run, name)!r}"
    for name, value in asdict(run.train).items():
        if name not in NOT_TRAINING and getattr(saved.train, name) != value:
            return f"train.{name} {getattr(saved.train, name)!r}, not {value!r}"
    options = METHODS[run.method].Options
    was, wanted = (options.from_dict(given, run.method).to_dict() for given in (saved.options, run.options))
    for field in options.fields():
        if not field.inference and field.name != "teacher" and was[field.name] != wanted[field.name]:
            return f"option {field.name} {was[field.name]!r}, not {wanted[field.name]!r}"
    return None


def check_folders(base: RunConfig, runs_dir: Path, runs: list[BenchRun]) -> None:
    """Raise ValueError when a run folder holds a run of other training settings than its entry's (a run
    of an older bench, or one copied in): ``run_bench`` checks every seed's folders before it trains."""
    for entry in runs:
        folder = runs_dir / entry.run
        run = replace(base, method=entry.method, options=entry.options)
        if (folder / "run.json").is_file() and (differs := settings_differ(folder, run)):
            raise ValueError(f"{folder}: trained with {differs} (the bench's {entry.name}); move it away or "
                             "choose another --output")


def train_all(base: RunConfig, runs_dir: Path, runs: list[BenchRun], progress: bool,
              device: str | None = None) -> None:
    """Train every entry into ``runs_dir`` that has no metrics.json yet (resuming those with a checkpoint)."""
    for i, entry in enumerate(runs, 1):
        folder = runs_dir / entry.run
        if (folder / "metrics.json").is_file():
            print(f"[{i}/{len(runs)}] {entry.name}: trained already ({folder})")
            continue
        print(f"[{i}/{len(runs)}] {entry.name}: training {folder}")
        resume = (folder / "checkpoint" / "state.json").is_file()
        train(replace(base, method=entry.method, options=entry.options), folder, resume=resume, progress=progress,
              device=device)


def inference_options(entry: BenchRun) -> dict[str, Any] | None:
    """What an entry is evaluated with: its options that evaluation may change, then its overrides; so a
    run reused from another bench (or shared by rows, as FastBERT's speeds are) is evaluated as the entry
    says, not as it was trained."""
    fields = METHODS[entry.method].Options.fields()
    chosen = {f.name: entry.options[f.name] for f in fields if f.inference and f.name in entry.options}
    return {**chosen, **(entry.overrides or {})} or None


def time_inference(prepared: list[Prepared], rounds: int) -> tuple[list[dict[str, Any]], list[float]]:
    """Evaluate each run ``rounds`` times, round-robin; return the last results and median seconds."""
    seconds: list[list[float]] = [[] for _ in prepared]
    results: list[dict[str, Any]] = [{} for _ in prepared]
    for _ in range(rounds):
        for i, p in enumerate(prepared):
            results[i] = evaluate(p)
            seconds[i].append(results[i]["seconds"])
    return results, [statistics.median(s) for s in seconds]


def portable(entry: BenchRun, runs_dir: Path) -> dict[str, Any]:
    """The entry as kept rows and points are keyed to it: a teacher as a path under the seed's runs folder,
    so what is kept moves with the folder (another ``--output``, another machine)."""
    kept = json.loads(json.dumps(asdict(entry)))
    if "teacher" in kept["options"]:
        kept["options"]["teacher"] = os.path.relpath(kept["options"]["teacher"], runs_dir)
    return kept


def training_digest(folder: Path) -> str:
    """The sha256 of a finished run's training block (metrics.json's ``train``): which training a kept
    measurement belongs to. Only that block: ``dht evaluate RUN --oracle`` adds to the file's other parts."""
    return hashlib.sha256(json.dumps(read_train(folder), sort_keys=True).encode()).hexdigest()


def has_weights(folder: Path) -> bool:
    """Whether a run folder holds its model (a finished run, or one mid-finishing; not one kept by
    ``bench/front_keep.py``, which copies no weights)."""
    return (folder / "model.safetensors").is_file()


def training_costs(runs_dir: Path, runs: list[BenchRun], entry: BenchRun) -> dict[str, float]:
    """The entry's training FLOPs (all-in) against BL1's (``runs[0]``), alone and with its teacher's."""
    trained, reference = read_train(runs_dir / entry.run), read_train(runs_dir / runs[0].run)
    teacher = read_train(Path(entry.options["teacher"])) if "teacher" in entry.options else None
    return {"train_flop_ratio_all_in": trained["flop_ratio_all_in"],
            "train_flop_ratio_with_teacher": with_teacher(trained, reference, teacher)}


def points_key(runs_dir: Path, runs: list[BenchRun], entry: BenchRun, seed: int, device: str | None) -> dict[str, Any]:
    """What an entry's kept operating points depend on: the entry, its training, its costs, code and device."""
    return {"entry": portable(entry, runs_dir), "trained": training_digest(runs_dir / entry.run), "seed": seed,
            "costs": training_costs(runs_dir, runs, entry), "code": package_version(),
            "device": str(resolve_device(device))}


def entry_points(ready: Prepared, runs_dir: Path, runs: list[BenchRun], entry: BenchRun, seed: int,
                 device: str | None, evaluated: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The entry's operating points and oracles (``run_points``: kept in its run folder)."""
    key = points_key(runs_dir, runs, entry, seed, device)
    return run_points(ready, entry, runs_dir / entry.run, seed, key["costs"], key, evaluated)


def result_rows(runs_dir: Path, runs: list[BenchRun], rounds: int, seed: int,
                device: str | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One row per run: training figures from its metrics.json, inference timed here, on one clock; and
    each trained run's operating points and oracles (``entry_points``)."""
    prepared = [load_run(runs_dir / entry.run, overrides=inference_options(entry), device=device) for entry in runs]
    tests, seconds = time_inference(prepared, rounds)
    rows, points, curved = [], [], set()
    for entry, test, wall, ready in zip(runs, tests, seconds, prepared):
        trained = read_train(runs_dir / entry.run)
        costs = training_costs(runs_dir, runs, entry)
        config = {k: v for k, v in entry.options.items() if k != "teacher"}
        rows.append({"method": entry.method, "config": entry.name, "seed": seed, "options": config,
                     "f1_macro": test["f1_macro"], "accuracy": test["accuracy"],
                     "train_flop_ratio": trained["flop_ratio"], **costs,
                     "test_flop_ratio": test["flop_ratio"], "test_flop_ratio_all_in": test["flop_ratio_all_in"],
                     "test_wall_ratio": wall / seconds[0], "test_seconds": wall,
                     "train_seconds": trained.get("seconds_all_in", trained["seconds"]),  # ACM: with its conversion
                     "train_device": trained.get("device", "not recorded"), "test_device": test["device"],
                     "timed_by": package_version(),
                     "trainable_params": trained.get("trainable_params"),
                     "train_peak_rss_growth_mb": trained.get("memory", {}).get("rss_peak_growth_mb")})
        if entry.run not in curved:  # rows sharing a trained run (FastBERT's speeds) share its curve
            curved.add(entry.run)
            points += entry_points(ready, runs_dir, runs, entry, seed, device, evaluated=test)
    bl1 = rows[0]["trainable_params"]
    for row in rows:  # what tying (DLT) or freezing (FastBERT) leaves to train, against BL1
        row["trainable_params_ratio"] = row["trainable_params"] / bl1 if row["trainable_params"] and bl1 else None
    return rows, points


def seed_points(runs_dir: Path, runs: list[BenchRun], seed: int, device: str | None = None) -> list[str]:
    """``dht bench --points-only``: the operating points and oracles of each of the seed's trained runs
    (once BL1 is trained), kept in their folders for the timing pass. F1 and FLOPs do not depend on the
    machine's load, so this may run beside training. A run without its weights (a seed kept by
    ``bench/front_keep.py``, whose points are in its kept rows) is left out. Returns the run folders done."""
    done: list[str] = []
    if not (runs_dir / runs[0].run / "metrics.json").is_file():
        return done
    for entry in runs:
        folder = runs_dir / entry.run
        if entry.run in done or not ((folder / "metrics.json").is_file() and has_weights(folder)):
            continue  # not trained yet, or kept without its weights
        key = points_key(runs_dir, runs, entry, seed, device)
        if kept_points(folder, key) is None:  # else kept already: not loaded
            ready = load_run(folder, overrides=inference_options(entry), device=device)
            run_points(ready, entry, folder, seed, key["costs"], key)
        done.append(entry.run)
    return done


SEED_ROWS = "bench_rows.json"  # a seed's rows and points, kept in its runs folder


def seed_results(runs_dir: Path, runs: list[BenchRun], rounds: int, seed: int,
                 device: str | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``result_rows`` for one seed, or what an earlier bench wrote for the same entries, trained runs
    (``training_digest``), rounds, device and ``dht`` package (``SEED_ROWS``): a bench stopped after a
    seed's timing does not time that seed again; a run trained anew, or changed code, is timed again,
    unless a run's weights are gone (the folders ``bench/front_keep.py`` copies): such a seed cannot be
    timed again, so its kept rows count whatever code timed them (each row's ``timed_by``), and
    ValueError is raised when anything else differs."""
    kept = runs_dir / SEED_ROWS
    trained = {entry.run: training_digest(runs_dir / entry.run) for entry in runs}
    what = json.loads(json.dumps({"runs": [portable(entry, runs_dir) for entry in runs], "trained": trained,
                                  "rounds": rounds, "device": str(resolve_device(device)),
                                  "code": package_version()}))
    gone = [entry.run for entry in runs if not has_weights(runs_dir / entry.run)]
    if kept.is_file():
        saved = json.loads(kept.read_text(encoding="utf-8"))
        differs = sorted(k for k in what if saved.get(k) != what[k])
        if not differs or (gone and differs == ["code"]):
            print(f"seed {seed}: timed already ({kept})" if not differs else
                  f"seed {seed}: timed already by dht {saved.get('code')}, not this code; kept as timed, since "
                  f"{gone[0]} has no weights here ({kept})")
            for row in saved["rows"]:  # rows kept before rows named it
                row.setdefault("timed_by", saved.get("code"))
            return saved["rows"], saved["points"]
        if gone:
            other = ", ".join(k for k in differs if k != "code")
            raise ValueError(f"{kept}: kept for other {other} than this bench's, and {gone[0]} has no weights to "
                             "time again (a bench of the same methods on the same device counts it)")
    print(f"seed {seed}: timing inference of every run, round-robin; then the operating points and oracles")
    rows, points = result_rows(runs_dir, runs, rounds, seed, device)
    partial = kept.with_suffix(".partial")
    partial.write_text(json.dumps({**what, "rows": rows, "points": points}, indent=1), encoding="utf-8")
    partial.replace(kept)  # whole or absent, whenever the bench stops
    return rows, points


def tables(rows: list[dict[str, Any]]) -> tuple[str, str]:
    """Table 1 (training) and Table 2 (inference) in markdown."""
    one = ["| run | seed | macro-F1 | train FLOP ratio | train FLOP ratio (all-in) | with the teacher's training "
           "| trainable params vs BL1 | peak RSS growth MB | train seconds |", "|---|---|---|---|---|---|---|---|---|"]
    two = ["| run | seed | macro-F1 | accuracy | inference FLOP ratio | inference FLOP ratio (all-in) "
           "| wall-time ratio vs BL1 |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        trainable = "" if r.get("trainable_params_ratio") is None else f"{r['trainable_params_ratio']:.3f}"
        rss = "" if r.get("train_peak_rss_growth_mb") is None else f"{r['train_peak_rss_growth_mb']:.0f}"
        one.append(f"| {r['config']} | {r['seed']} | {r['f1_macro']:.4f} | {r['train_flop_ratio']:.3f} "
                   f"| {r['train_flop_ratio_all_in']:.3f} | {r['train_flop_ratio_with_teacher']:.3f} | {trainable} "
                   f"| {rss} | {r['train_seconds']:.0f} |")
        two.append(f"| {r['config']} | {r['seed']} | {r['f1_macro']:.4f} | {r['accuracy']:.4f} "
                   f"| {r['test_flop_ratio']:.3f} | {r['test_flop_ratio_all_in']:.3f} | {r['test_wall_ratio']:.3f} |")
    return "\n".join(one) + "\n", "\n".join(two) + "\n"


def run_bench(data: str, backbone: str, output: Path, quick: bool, seeds: tuple[int, ...] = (0,), rounds: int = 2,
              progress: bool = True, device: str | None = None, lr: float | None = None,
              methods: tuple[str, ...] | None = None, train_only: bool = False,
              points_only: bool = False) -> list[dict[str, Any]]:
    """Seed by seed, train what is missing, time the seed's inference and write the tables, results.json
    (a row per run and seed), curves.json (operating points and oracles), front.json (means over seeds)
    and the plots, over the seeds timed so far. One seed trains into OUTPUT/runs, several into
    OUTPUT/runs/seedS. ``methods``: only these methods' runs (and BL1's). ``train_only``: train every seed
    and time none (time later, on a quiet machine; returns no rows). ``points_only``: train nothing and
    time nothing, only keep the trained runs' operating points and oracles (``seed_points``, which may run
    beside training; returns no rows). Raises ValueError for an unknown method or a run folder of other
    settings (every seed's folders are checked before anything trains)."""
    from dht.model import resolve_backbone

    num_layers = resolve_backbone(backbone).config.num_layers
    rows: list[dict[str, Any]] = []
    points: list[dict[str, Any]] = []
    plan = {}
    for seed in seeds:  # every seed's folders are checked before anything trains
        runs_dir = output / "runs" if len(seeds) == 1 else output / "runs" / f"seed{seed}"
        train_config = TrainConfig(seed=seed, **(QUICK if quick else {}), **({"lr": lr} if lr is not None else {}))
        base = RunConfig(data=data, backbone=backbone, train=train_config)
        runs = entries(num_layers, runs_dir / TEACHER, methods)
        check_folders(base, runs_dir, runs)
        plan[seed] = base, runs_dir, runs
    for seed, (base, runs_dir, runs) in plan.items():  # seed by seed: what a seed finished is written
        if points_only:
            done = seed_points(runs_dir, runs, seed, device)
            print(f"seed {seed}: operating points and oracles kept for {len(done)} trained runs")
            continue
        train_all(base, runs_dir, runs, progress, device)
        if train_only:
            continue
        timed_rows, timed_points = seed_results(runs_dir, runs, rounds, seed, device)
        rows, points = rows + timed_rows, points + timed_points
        for entry in runs:
            if (runs_dir / entry.run / "selection.png").is_file():  # what a dynamic method's runs chose
                shutil.copy(runs_dir / entry.run / "selection.png", output / f"selection-{entry.name}.png")
        write_outputs(output, rows, points, device)
    return rows


def write_outputs(output: Path, rows: list[dict[str, Any]], points: list[dict[str, Any]],
                  device: str | None) -> None:
    """The tables, results.json, curves.json, front.json, front.md and both Pareto plots over ``rows``
    (one per run and seed) and ``points`` (operating points and oracles)."""
    table1, table2 = tables(rows)
    front = front_rows(rows)
    (output / "table1.md").write_text(table1, encoding="utf-8")
    (output / "table2.md").write_text(table2, encoding="utf-8")
    (output / "front.md").write_text(front_table(front), encoding="utf-8")
    where = resolve_device(device)
    write_result(output / "results.json", rows, where)
    write_result(output / "curves.json", points, where)
    write_result(output / "front.json", front, where)
    plot_inference_front(front, points, output / "pareto.png")
    plot_training_front(front, output / "pareto_training.png")
