"""How fast a bad command line fails: `dht train` with a missing --teacher, against `import torch` alone.

Runs each command ``--repeats`` times, alternating, in fresh processes, and reports the median wall
seconds. The CLI parses its flags from a manifest of the methods' options and runs the checks that need
no model (a flag the method does not take, a missing or unfinished --teacher) before importing the
methods and torch, so these refusals cost the interpreter and argparse; ``import torch`` alone is what
they would cost at least if the flags were built from the method modules (which import torch).

Usage: python bench/cli_startup.py [--repeats 7] [--output PATH]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from dht.provenance import repo_path, write_result

COMMANDS = {
    "import torch": [sys.executable, "-c", "import torch"],
    "dht train --method distil (no --teacher)": [sys.executable, "-m", "dht", "train", "--method", "distil",
                                                  "--backbone", "tiny", "--output", "/nonexistent/run"],
    "dht train --method fastbert --teacher no/such/run": [sys.executable, "-m", "dht", "train", "--method",
                                                          "fastbert", "--teacher", "no/such/run", "--backbone",
                                                          "tiny", "--output", "/nonexistent/run"],
    "dht train --method full --speed 0.5": [sys.executable, "-m", "dht", "train", "--method", "full", "--speed",
                                            "0.5", "--backbone", "tiny", "--output", "/nonexistent/run"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--output", type=Path, default=repo_path("bench/results/cli_startup.json"))
    args = parser.parse_args()
    seconds: dict[str, list[float]] = {name: [] for name in COMMANDS}
    codes: dict[str, int] = {}
    for _ in range(args.repeats):
        for name, command in COMMANDS.items():
            start = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True, timeout=120)
            seconds[name].append(time.perf_counter() - start)
            codes[name] = done.returncode
    rows = [{"command": name, "exit_code": codes[name], "median_s": round(statistics.median(s), 3),
             "min_s": round(min(s), 3), "max_s": round(max(s), 3)} for name, s in seconds.items()]
    write_result(args.output, {"repeats": args.repeats, "rows": rows})
    for row in rows:
        print(f"{row['command']:50} exit {row['exit_code']}  median {row['median_s']:.3f} s "
              f"(min {row['min_s']:.3f}, max {row['max_s']:.3f})")


if __name__ == "__main__":
    main()
