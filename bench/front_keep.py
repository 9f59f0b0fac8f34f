"""Copy a bench's run folders without their weights, so its timed seeds travel to another machine.

`dht bench --seeds 0 1 2` on a 2-core CPU takes about three hours per seed (training, then the timing),
longer than one session on a machine that may not be the same tomorrow. What a timed seed needs to count
in `front.json` is small: its kept rows (``bench_rows.json``) and each run's ``run.json`` and
``metrics.json`` (the bench checks the first against its settings and keys the rows to the second). This
copies those and the runs' selection plots, and nothing else (no weights, checkpoints, tokenizers, logs), from
SOURCE to DESTINATION, keeping the folders' layout. Copied back into a bench's ``runs`` folder, a seed
counts as trained and timed, and the bench goes on with the next one.

Usage:
    python bench/front_keep.py runs/bench/runs bench/results/ag_news/front/kept   # keep the timed seeds
    python bench/front_keep.py bench/results/ag_news/front/kept runs/bench/runs   # on the next machine

Only seeds with a ``bench_rows.json`` are copied, and of them only the runs it was timed with (a seed trained
but not timed would need its weights). Copied back, they count for a bench with the same ``--output``,
``--methods`` and device as the one that timed them. Exit code 2 with one line when SOURCE holds no timed
seed, or a run was trained again after its seed was timed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from dht.benchmark import SEED_ROWS, training_digest

RUN_FILES = ("run.json", "metrics.json", "selection.png")  # what `dht bench` reads of a timed seed's runs


def timed_seeds(source: Path) -> list[Path]:
    """The folders under ``source`` (itself included) that hold a bench's kept rows, sorted."""
    return sorted(rows.parent for rows in source.rglob(SEED_ROWS))


def keep(source: Path, destination: Path) -> list[Path]:
    """Copy each timed seed's kept rows, and the run.json, metrics.json and selection.png of the runs they name,
    from ``source`` to ``destination`` (same relative paths); return the files written, relative to
    ``destination``. Raises ValueError when ``source`` holds no timed seed, or a run's metrics.json is not
    the one its seed was timed with (trained again since: its rows would not count, and its weights stay)."""
    seeds = timed_seeds(source)
    if not seeds:
        raise ValueError(f"{source}: no {SEED_ROWS} under it (no seed was timed)")
    files = []
    for seed in seeds:
        trained = json.loads((seed / SEED_ROWS).read_text(encoding="utf-8"))["trained"]
        files.append(seed / SEED_ROWS)
        for run, digest in trained.items():
            if training_digest(seed / run) != digest:
                raise ValueError(f"{seed / run / 'metrics.json'}: not the run {seed / SEED_ROWS} was timed with "
                                 "(trained again since); time that seed again first")
            files += [seed / run / name for name in RUN_FILES if (seed / run / name).is_file()]
    written = []
    for path in files:
        target = destination / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        written.append(target.relative_to(destination))
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("destination", type=Path)
    args = parser.parse_args()
    try:
        written = keep(args.source, args.destination)
    except ValueError as error:
        print(f"front_keep: error: {error}", file=sys.stderr)
        return 2
    print(f"{args.destination}: {len(written)} files ({len(timed_seeds(args.source))} timed seeds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
