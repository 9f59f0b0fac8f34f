"""A run folder before its training starts, and what a stop leaves in it.

``start_run`` lays out a new run's folder (run.json, tokenizer.json, empty logs), starts again one that
stopped before its first checkpoint or on a value that was not finite, resumes a saved one (``--resume``,
its own settings), and refuses a finished one or a folder that is not a run's. Under torchrun rank 0 does
this and the other ranks build the same run from the folder (``start_on_every_rank``), resuming with as many
processes as trained it (``check_world_size``). ``stop_on_non_finite`` records a stop on a value that was
not finite (``stopped.json``) and says in one line whether the last checkpoint may be resumed.
"""

from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

from dht.provenance import write_atomically
from dht.training.checkpoint import damaged, latest_checkpoint
from dht.training.config import RUN_FILE, RunConfig, read_run_settings, run_file
from dht.training.distributed import World
from dht.training.hooks import NonFiniteError
from dht.training.setup import Prepared, check_options, dataset_dir, prepare

# What a run writes before its first checkpoint (removed when such a run is started again).
STARTED_FILES = ("tokenizer.json", "log.jsonl", "decisions.jsonl", "checkpoint.tmp", "stopped.json")
# Written when a non-finite value stopped the run: its last checkpoint may then be resumed with a lower --lr.
STOPPED_FILE = "stopped.json"


class RunExistsError(ValueError):
    """The output folder already holds a run and --resume was not given."""


def is_run_settings(path: Path) -> bool:
    """Whether ``path`` is a dht run's settings file (not, say, a Hugging Face model's config.json)."""
    try:
        return "run" in json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return False


def start_run(run: RunConfig, output: Path, resume: bool, device: str | None = None,
              lr: float | None = None) -> Prepared:
    """Prepare a new run (or the saved one when resuming) on ``device`` and lay out its folder.

    A folder whose run stopped before its first checkpoint, or on a value that was not finite
    (``stopped.json``), is started again; the latter may instead be resumed with a new peak learning rate
    ``lr``, which its run.json then records. A finished run is neither resumed nor overwritten (ValueError)."""
    finished = (output / "metrics.json").is_file()
    stopped = (output / STOPPED_FILE).is_file() and not finished
    if lr is not None and not (resume and stopped):
        raise ValueError(f"{output}: --lr comes with --resume only for a run that a value that was not finite "
                         "stopped after a checkpoint it can go back to")
    if resume:
        return _resume(output, finished, stopped, lr, device)
    if finished:
        raise RunExistsError(f"{output} already holds a finished run; choose another --output")
    if latest_checkpoint(output) is not None and not stopped:
        raise RunExistsError(f"{output} already holds a run; pass --resume to continue it or choose another --output")
    if run_file(output).is_file() and not is_run_settings(run_file(output)):
        raise RunExistsError(f"{run_file(output)} is not a dht run's settings; choose another --output")
    prepared = prepare(run, device=device)  # validates everything before anything is written
    if run_file(output).is_file():  # a run that stopped before its first checkpoint or diverged: again
        run_file(output).unlink()
        for name in STARTED_FILES + ("checkpoint", "checkpoint.old"):
            path = output / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    output.mkdir(parents=True, exist_ok=True)
    shutil.copy(prepared.tokenizer_json, output / "tokenizer.json")
    config = {"run": prepared.run.to_dict(), "encoder": prepared.model.config.to_dict(),
              "dataset": {"name": prepared.dataset.name, "path": str(dataset_dir(prepared.run)),
                          "classes": list(prepared.dataset.classes)}}
    write_atomically(output / RUN_FILE, json.dumps(config, indent=1))  # a kill leaves all of it or none
    for records in ("log.jsonl", "decisions.jsonl"):
        (output / records).write_text("", encoding="utf-8")
    return prepared


def saved_settings(output: Path) -> RunConfig:
    """A run folder's settings, its method options checked (a ValueError naming run.json)."""
    settings = read_run_settings(output)
    try:
        check_options(settings)
    except ValueError as error:
        raise ValueError(f"{run_file(output)}: {error}") from None
    return settings


def _resume(output: Path, finished: bool, stopped: bool, lr: float | None, device: str | None) -> Prepared:
    """The saved run, prepared to continue from its checkpoint; a run a non-finite value stopped may take a
    new peak learning rate ``lr``, which its run.json then records. The stop, if any, is cleared."""
    if finished:
        raise ValueError(f"{output}: the run is finished (metrics.json); there is nothing to resume "
                         "(dht evaluate re-scores it)")
    if stopped:
        with damaged(output / STOPPED_FILE):
            resumable = bool(json.loads((output / STOPPED_FILE).read_text(encoding="utf-8"))["resumable"])
        if not resumable:
            raise ValueError(f"{output}: a value that was not finite stopped it with no checkpoint to go back to; "
                             "run it again without --resume (a lower --lr)")
    if latest_checkpoint(output) is None:
        again = "; it stopped before its first checkpoint: run it again without --resume" \
            if run_file(output).exists() else ""
        raise ValueError(f"{output}: no checkpoint to resume from{again}")
    settings = saved_settings(output)
    if lr is not None:
        settings = replace(settings, train=replace(settings.train, lr=lr))  # validated by TrainConfig
    prepared = prepare(settings, device=device)
    if lr is not None:
        config = json.loads(run_file(output).read_text(encoding="utf-8"))
        config["run"]["train"]["lr"] = lr
        write_atomically(run_file(output), json.dumps(config, indent=1))
    (output / STOPPED_FILE).unlink(missing_ok=True)
    return prepared


@dataclass
class Marks:
    """The steps that decide what a non-finite value leaves resumable."""

    saved: int = 0  # the step of the last checkpoint written
    good: int = 0  # the last step whose weights then gave a finite loss (the step before one with a finite loss)


@contextmanager
def stop_on_non_finite(output: Path, step: Callable[[], int | None], marks: Marks, lr_flag: str,
                       write: bool = True) -> Iterator[None]:
    """Turn a NonFiniteError at ``step()`` (None: after the last step) into one line naming the run, the
    step and what the user can do; record the stop (``stopped.json``) so that the folder may be resumed
    with a lower --lr or started again. ``lr_flag``: the flag of the learning rate the method trains at.

    The last checkpoint is offered for resuming only if its weights then gave a finite loss: the weights
    of the step just before a non-finite loss may themselves be what made it so."""
    try:
        yield
    except NonFiniteError as error:
        failed = step()
        resumable = failed is not None and 0 < marks.saved <= marks.good and lr_flag == "--lr"
        where = f"step {failed}" if failed is not None else "after its last step"
        if write:  # under torchrun, rank 0 writes for every rank (they stop at the same step)
            write_atomically(output / STOPPED_FILE, json.dumps({"where": where, "checkpoint_step": marks.saved,
                                                                "resumable": resumable, "error": str(error)}))
        options = (f"resume the checkpoint of step {marks.saved} with a lower peak learning rate (dht train "
                   f"--resume --lr LR --output {output}) or " if resumable else "")
        raise NonFiniteError(f"{output}: {where}: {error}; {options}run it again with a lower {lr_flag} "
                             f"(with the same --output {output}, the run starts afresh)") from None


def start_on_every_rank(world: World, run: RunConfig, output: Path, resume: bool, device: str | None,
                        lr: float | None) -> Prepared:
    """``start_run`` on rank 0, which lays out the folder; the other ranks then build the same run from it
    (a fresh run's settings, or the saved ones when resuming). A failure on rank 0 fails every rank."""
    if resume:
        check_world_size(output, world.size)  # before _resume changes anything
    if not world.distributed:
        return start_run(run, output, resume, device, lr)
    try:
        prepared = start_run(run, output, resume, device, lr) if world.main else None
    except Exception as error:
        world.share(str(error))
        raise
    failed = world.share(None)
    if failed is not None:
        raise ValueError(f"rank 0 could not start the run: {failed}")
    if not world.main:
        prepared = prepare(saved_settings(output) if resume else run, device=device)
    world.broadcast_parameters(prepared.model)
    last, size = len(prepared.train) % prepared.run.train.batch_size, prepared.run.train.batch_size
    if not prepared.method.shards_itself and (size < world.size or 0 < last < world.size):
        raise ValueError(f"--batch-size {size} over {len(prepared.train)} training rows leaves a batch of "
                         f"{min(size, last or size)} samples, fewer than the {world.size} ranks; choose another "
                         "--batch-size (or --max-train)")
    prepared.method.world = world
    return prepared


def check_world_size(output: Path, size: int) -> None:
    """A run resumes with as many processes as trained it (the shards, and so its numbers, depend on it):
    ValueError otherwise, naming both. A finished run or one without a checkpoint is left to ``_resume``."""
    checkpoint = latest_checkpoint(output)
    if checkpoint is None or (output / "metrics.json").is_file():
        return
    with damaged(checkpoint / "state.json"):
        counters = json.loads((checkpoint / "state.json").read_text(encoding="utf-8"))["counters"]
        saved = int(counters.get("world_size", 1))
    if saved != size:
        raise ValueError(f"{output}: the run was trained by {saved} process(es); resume it with as many "
                         f"(torchrun --nproc-per-node), not {size}")
