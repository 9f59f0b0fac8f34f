"""Checkpoints in standard formats: tensors in safetensors, everything else in JSON.

A checkpoint folder holds ``model.safetensors`` (the network), ``state.safetensors`` (optimizer
moments, RNG states, the method's tensors) and ``state.json`` (counters, optimizer hyper-parameters,
the method's other state). It is written to a temporary folder and renamed into place, the previous one
kept as ``checkpoint.old`` until then, so a kill at any moment leaves a complete checkpoint
(``latest_checkpoint`` finds it).
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from typing_extensions import NotRequired, TypedDict  # pydantic needs this one before Python 3.12

from dht.model import DynamicEncoder
from dht.schema import validated


def split_state(state: Any, prefix: str, tensors: dict[str, Tensor]) -> Any:
    """Replace every tensor in a nested dict/list by a reference and collect it in ``tensors``."""
    if isinstance(state, Tensor):
        tensors[prefix] = state.detach().contiguous().clone()
        return {"__tensor__": prefix}
    if isinstance(state, dict):
        return {str(k): split_state(v, f"{prefix}.{k}", tensors) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return [split_state(v, f"{prefix}.{i}", tensors) for i, v in enumerate(state)]
    return state


def join_state(state: Any, tensors: dict[str, Tensor]) -> Any:
    """Inverse of split_state."""
    if isinstance(state, dict):
        if set(state) == {"__tensor__"}:
            return tensors[state["__tensor__"]]
        return {k: join_state(v, tensors) for k, v in state.items()}
    if isinstance(state, list):
        return [join_state(v, tensors) for v in state]
    return state


def save_checkpoint(directory: Path, model: DynamicEncoder, optimizer: torch.optim.Optimizer,
                    counters: dict[str, Any], method_state: dict[str, Any],
                    ranks: list[dict[str, Tensor]] | None = None) -> None:
    """Write the whole training state to ``directory`` atomically. ``ranks``: under torchrun, every rank's
    ``rng_state()`` (each rank's dropout draws from its own generator), restored rank by rank when resuming."""
    tensors: dict[str, Tensor] = {}
    state = {
        "counters": counters,
        "optimizer": split_state(optimizer.state_dict(), "optimizer", tensors),
        "method": split_state(method_state, "method", tensors),
        "rng": split_state({**rng_state(), **({"ranks": ranks} if ranks else {})}, "rng", tensors),
    }
    temporary = directory.with_name(directory.name + ".tmp")
    previous = directory.with_name(directory.name + ".old")
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    save_model(temporary / "model.safetensors", model)
    save_file(tensors, str(temporary / "state.safetensors"))
    (temporary / "state.json").write_text(json.dumps(state, indent=1), encoding="utf-8")  # written last
    shutil.rmtree(previous, ignore_errors=True)
    if directory.exists():
        directory.rename(previous)  # until the new one is in place, the last complete one stays
    temporary.rename(directory)
    shutil.rmtree(previous, ignore_errors=True)


class Counters(TypedDict):
    """The loop's progress as a checkpoint's state.json holds it (checked when resuming, ``dht.schema``)."""

    epoch: int
    batch: int
    step: int
    seconds: float
    flops: float
    full_flops: float
    flops_all_in: float
    samples: int
    world_size: NotRequired[int]  # the processes that trained it (torchrun); absent in older runs: 1


class CheckpointState(TypedDict):
    """state.json (with the tensors of state.safetensors put back): what ``save_checkpoint`` wrote."""

    counters: Counters
    optimizer: dict[str, Any]
    rng: dict[str, Any]
    method: dict[str, Any]


def latest_checkpoint(output: Path) -> Path | None:
    """The run folder's complete checkpoint: ``checkpoint/``, or ``checkpoint.old/`` when a kill came
    between ``save_checkpoint``'s two renames; None when the run has none."""
    for name in ("checkpoint", "checkpoint.old"):
        if (output / name / "state.json").is_file():
            return output / name
    return None


def load_checkpoint(directory: Path, model: DynamicEncoder, optimizer: torch.optim.Optimizer,
                    rank: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restore model, optimizer and RNG (``rank``'s, for a run trained under torchrun) from ``directory``;
    return (counters, method_state). A damaged file is a ValueError naming it."""
    with damaged(directory / "model.safetensors"):
        load_model(directory / "model.safetensors", model)
    with damaged(directory / "state.safetensors"):
        tensors = load_file(str(directory / "state.safetensors"))
    with damaged(directory / "state.json"):
        state = join_state(json.loads((directory / "state.json").read_text(encoding="utf-8")), tensors)
        state = validated(CheckpointState, state)
    optimizer_state = state["optimizer"]
    # JSON turned the optimizer's integer parameter ids into strings.
    optimizer_state["state"] = {int(k): v for k, v in optimizer_state["state"].items()}
    optimizer.load_state_dict(optimizer_state)
    rng = state["rng"]["ranks"][rank] if "ranks" in state["rng"] else state["rng"]
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():  # dropout's generator on a GPU
        torch.cuda.set_rng_state(rng["cuda"])
    return state["counters"], state["method"]


@contextlib.contextmanager
def damaged(path: Path) -> Iterator[None]:
    """Turn any failure to read ``path`` (truncated, not what it claims) into one line naming it."""
    try:
        yield
    except Exception as error:  # safetensors, json and torch each raise their own kinds
        raise ValueError(f"{path}: damaged or not the file it should be ({str(error).splitlines()[0][:160]})"
                         ) from None


def rng_state() -> dict[str, Tensor]:
    """The random generators a resumed run must continue: the CPU's, and the current GPU's if in use."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def save_model(path: Path, model: DynamicEncoder) -> None:
    """Save the network's weights (our parameter names) as safetensors. Tensors that share storage (layers
    tied by dynamic layer tying) are written as copies, which safetensors requires; the method's state
    says which layers to tie again on load."""
    seen: set[int] = set()
    tensors = {}
    for key, value in model.state_dict().items():
        pointer = value.untyped_storage().data_ptr()
        tensors[key] = value.contiguous().clone() if pointer in seen else value.contiguous()
        seen.add(pointer)
    save_file(tensors, str(path))


def load_model(path: Path, model: DynamicEncoder) -> None:
    """Load weights saved by save_model; every key must match."""
    model.load_state_dict(load_file(str(path)), strict=True)
