"""A finished BL1 run as the teacher of a baseline (BL2's students and BL3's FastBERT start from it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import load_file

from dht.model import DynamicEncoder, EncoderConfig
from dht.training.config import read_run_file
from dht.training.options import MethodOptions, finished_run, option


@dataclass(frozen=True)
class TeacherOptions(MethodOptions):
    """Options of a method that starts from a trained BL1 run."""

    teacher: str = option("", "a finished BL1 run folder (dht train --method full) to start from",
                          check="finished_run")


def teacher_dir(teacher: str) -> Path:
    """The --teacher run folder; a ValueError naming the flag when it is missing or not a finished run."""
    finished_run("--teacher", teacher)
    return Path(teacher)


def teacher_config(path: Path, expected: EncoderConfig) -> EncoderConfig:
    """The teacher run's encoder shape; a ValueError when it is not ``expected`` (branch classifiers aside)."""
    saved = read_run_file(path).encoder
    if saved.replace(branch_classifiers=False) != expected.replace(branch_classifiers=False):
        raise ValueError(f"{path}: the teacher's shape differs from this run's backbone and data")
    return saved


def load_teacher_weights(model: DynamicEncoder, path: Path) -> None:
    """Copy the teacher's weights into ``model``; shapes must agree (branch classifiers may be new)."""
    teacher_config(path, model.config)
    missing, unexpected = model.load_state_dict(load_file(str(path / "model.safetensors")), strict=False)
    if unexpected or any(not key.startswith("branches.") for key in missing):
        raise ValueError(f"{path}: the teacher's weights do not fit "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")


def teacher_model(path: Path, expected: EncoderConfig) -> DynamicEncoder:
    """The teacher run at ``path`` as a model of its own (for methods that keep it beside the student);
    a ValueError when its shape is not ``expected`` (branch classifiers aside)."""
    teacher = DynamicEncoder(teacher_config(path, expected))
    teacher.load_state_dict(load_file(str(path / "model.safetensors")))
    return teacher
