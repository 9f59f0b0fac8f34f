"""Load a finished BL1 run as the teacher of a baseline."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file

from dht.model import DynamicEncoder, EncoderConfig


def teacher_dir(options: dict, method: str) -> Path:
    """The --teacher run folder from a run's options; a clear error when it is missing or unfinished."""
    if not options.get("teacher"):
        raise ValueError(f"--method {method} needs --teacher RUN_DIR, a finished run of --method full (BL1)")
    path = Path(options["teacher"])
    if not (path / "model.safetensors").is_file() or not (path / "config.json").is_file():
        raise ValueError(f"{path}: not a finished run (needs config.json and model.safetensors)")
    return path


def load_teacher_weights(model: DynamicEncoder, path: Path) -> None:
    """Copy the teacher's weights into ``model``; shapes must agree (branch classifiers may be new)."""
    saved = EncoderConfig.from_dict(json.loads((path / "config.json").read_text(encoding="utf-8"))["encoder"])
    if saved.replace(branch_classifiers=False) != model.config.replace(branch_classifiers=False):
        raise ValueError(f"{path}: the teacher's shape differs from this run's backbone and data")
    missing, unexpected = model.load_state_dict(load_file(str(path / "model.safetensors")), strict=False)
    if unexpected or any(not key.startswith("branches.") for key in missing):
        raise ValueError(f"{path}: the teacher's weights do not fit (missing {missing[:3]}, unexpected {unexpected[:3]})")
