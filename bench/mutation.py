"""Mutation testing of DHT's bandits, search and method (issue 20): how many planted mistakes the tests catch.

Runs mutmut (configured in pyproject.toml, ``[tool.mutmut]``: the modules ``dht/bandits/``,
``dht/search/``, ``dht/methods/dht.py``, ``dht_queues.py`` and ``dht_inference.py``, run against the tests of
the bandits and the search and the hand-computed DHT tests of ``tests/methods/`` that the configuration lists)
and writes ``bench/results/mutation.json``: the kill rate overall and per module, and every surviving
mutant with its diff and the reason it survives where one is known: the mutant changes only the text of a
message (found from its tokens; reported apart, with the kill rate of the other mutants beside the whole
one), or ``bench/mutation_survivors.json`` gives one (an equivalent mutant, or a behaviour no test should
pin). Survivors without a reason are listed as such: each is a test to write.

mutmut 3 copies the package to ``mutants/``, collects which tests reach which function, and runs, for each
mutant, only those tests in a forked child; a mutant is killed when they fail (or time out). Nothing else
should run meanwhile: timeouts scale with the tests' measured durations.

Usage: python bench/mutation.py [--skip-run] [--max-children 2] [--output PATH]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
import textwrap
import time
import tokenize
from collections import Counter, defaultdict
from pathlib import Path

from dht.provenance import repo_path, write_result

ROOT = repo_path(".")
MUTMUT = Path(sys.executable).with_name("mutmut")
REASONS = repo_path("bench/mutation_survivors.json")
MESSAGE_ONLY = "changes only the text of a message (a string literal, or None in its place)"
DEVICE_ONLY = ("changes only where a tensor is put (a device argument dropped or None, .to(x.device) made .to(None)): "
               "the tests run on a CPU-only machine, where every tensor is on the CPU either way")
# A changed string is a message's text only on a line that builds a message (a string elsewhere may be a key).
MESSAGE_WORDS = ("raise ", "Error(", "warn", "check_", "print(", "f\"", "message")
# mutmut's exit-code meanings (mutmut.stats.status_by_exit_code), kept here so a reader sees them.
KILLED, SURVIVED = {1, 3, 36, 24, -24, 152, 255, -9, -11}, {0}


def status(code: int | None) -> str:
    """A mutant's outcome from its test run's exit code: killed (a test failed, timed out or crashed),
    survived (every test passed), or another state (not run, no test reaches it)."""
    if code in KILLED:
        return "killed"
    if code in SURVIVED:
        return "survived"
    return {None: "not checked", 5: "no tests", 33: "no tests", 34: "skipped"}.get(code, "suspicious")


def module_of(mutant: str) -> str:
    """``dht.bandits.linucb.x_LinUCB__update__mutmut_3`` → ``dht.bandits.linucb``."""
    parts = mutant.split(".")
    return ".".join(parts[:-1])


def diff(mutant: str) -> str:
    """mutmut's diff of one mutant against the original source."""
    shown = subprocess.run([str(MUTMUT), "show", mutant], cwd=ROOT, capture_output=True, text=True, check=True)
    return "\n".join(line for line in shown.stdout.splitlines()[1:] if line.strip())


def tokens(lines: list[str]) -> list[tuple[int, str]]:
    """Python tokens (type, text) of some source lines, comments and layout left out; [] if they do not
    tokenize on their own (a fragment of a longer statement)."""
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
    try:
        source = textwrap.dedent("\n".join(lines)) + "\n"
        read = io.StringIO(source).readline
        return [(t.type, t.string) for t in tokenize.generate_tokens(read) if t.type not in skip]
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return []


def message_only(change: str) -> bool:
    """Whether a mutant changes nothing but string literals (or puts None where one was) on a line that
    builds a message (``MESSAGE_WORDS``): the text of an error or log message, which the tests match by key
    words, not letter by letter."""
    before = [line[1:] for line in change.splitlines() if line.startswith("-") and not line.startswith("---")]
    after = [line[1:] for line in change.splitlines() if line.startswith("+") and not line.startswith("+++")]
    old, new = tokens(before), tokens(after)
    if not old or len(old) != len(new) or not any(word in line for line in before for word in MESSAGE_WORDS):
        return False
    changed = [(a, b) for a, b in zip(old, new) if a != b]
    return bool(changed) and all(a[0] == tokenize.STRING and (b[0] == tokenize.STRING or b[1] == "None")
                                 for a, b in changed)


def device_only(change: str) -> bool:
    """Whether a mutant changes nothing but a device argument: ``device=x.device`` made ``device=None`` or
    dropped, or ``.to(x.device)`` made ``.to(None)`` (a ``.to(dtype)`` made ``.to(None)`` does not count)."""
    def normal(lines: list[str]) -> str:
        text = " ".join(line.strip() for line in lines)
        text = re.sub(r"\.to\((?:self|[a-z_]+)\.device\)", ".to(D)", text)
        text = re.sub(r",?\s*\bdevice=[\w.]+", "", text)
        return re.sub(r",\s*\)", ")", text)
    before = [line[1:] for line in change.splitlines() if line.startswith("-") and not line.startswith("---")]
    after = [line[1:] for line in change.splitlines() if line.startswith("+") and not line.startswith("+++")]
    if not before or not any("device" in line for line in before):
        return False
    return normal(before) == normal(after).replace(".to(None)", ".to(D)")


def collect() -> dict:
    """Every mutant's status from mutmut's ``mutants/**/*.py.meta`` files, grouped by module."""
    outcomes: dict[str, str] = {}
    for meta in sorted((ROOT / "mutants").rglob("*.py.meta")):
        outcomes.update({name: status(code) for name, code in json.loads(meta.read_text())["exit_code_by_key"].items()})
    reasons = json.loads(REASONS.read_text()) if REASONS.is_file() else {}
    by_module: dict[str, Counter] = defaultdict(Counter)
    for name, outcome in outcomes.items():
        by_module[module_of(name)][outcome] += 1
    survivors = []
    for name in sorted(n for n, outcome in outcomes.items() if outcome == "survived"):
        change = diff(name)
        reason = reasons.get(name) or (MESSAGE_ONLY if message_only(change) else None) or (
            DEVICE_ONLY if device_only(change) else None)
        survivors.append({"mutant": name, "diff": change, "reason": reason})
    counts = Counter(outcomes.values())
    decided = counts["killed"] + counts["survived"]
    messages = sum(s["reason"] == MESSAGE_ONLY for s in survivors)
    return {"mutants": len(outcomes), "counts": dict(counts),
            "kill_rate": counts["killed"] / decided if decided else None,
            "kill_rate_of_all": counts["killed"] / len(outcomes) if outcomes else None,  # untested ones count as alive
            "survived_message_text_only": messages,
            "kill_rate_without_message_text": counts["killed"] / (decided - messages) if decided > messages else None,
            "per_module": {module: {**dict(c), "kill_rate": c["killed"] / max(1, c["killed"] + c["survived"])}
                           for module, c in sorted(by_module.items())},
            "survivors_explained": sum(s["reason"] is not None for s in survivors),
            "survivors_unexplained": sum(s["reason"] is None for s in survivors),
            "survivors": survivors}


def table(result: dict) -> str:
    """Markdown: per module, the mutants and what became of them; then how many survivors each reason covers."""
    survivors: dict[str, Counter] = defaultdict(Counter)
    for survivor in result["survivors"]:
        survivors[module_of(survivor["mutant"])]["explained" if survivor["reason"] else "unexplained"] += 1
    lines = ["| module | mutants | killed | survived, explained | survived, unexplained | no test reaches it "
             "| killed of killed + survived |", "|---|---|---|---|---|---|---|"]
    for module, c in result["per_module"].items():
        total = sum(v for k, v in c.items() if k != "kill_rate")
        lines.append(f"| `{module}` | {total} | {c.get('killed', 0)} | {survivors[module]['explained']} | "
                     f"{survivors[module]['unexplained']} | {c.get('no tests', 0)} | {c['kill_rate']:.3f} |")
    counts = result["counts"]
    lines.append(f"| all | {result['mutants']} | {counts.get('killed', 0)} | {result['survivors_explained']} | "
                 f"{result['survivors_unexplained']} | {counts.get('no tests', 0)} | {result['kill_rate']:.3f} |")
    reasons = Counter(s["reason"] for s in result["survivors"] if s["reason"])
    lines += ["", "| why a survivor is left alive | mutants |", "|---|---|"]
    lines += [f"| {reason} | {n} |" for reason, n in reasons.most_common()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-run", action="store_true", help="only collect the results of an earlier run")
    parser.add_argument("--table", action="store_true", help="print the markdown tables of --output and stop")
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--output", type=Path, default=repo_path("bench/results/mutation.json"))
    args = parser.parse_args()
    if args.table:
        print(table(json.loads(args.output.read_text())["result"]))
        return
    seconds, children = None, args.max_children
    if not args.skip_run:
        start = time.perf_counter()
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        subprocess.run([str(MUTMUT), "run", "--max-children", str(children)], cwd=ROOT, env=env, check=True)
        seconds = time.perf_counter() - start
    elif args.output.is_file():  # collecting again (new reasons): the run's own seconds and children stay
        earlier = json.loads(args.output.read_text())["result"]
        seconds, children = earlier.get("seconds"), earlier.get("max_children", children)
    result = {**collect(), "seconds": seconds, "max_children": children}
    write_result(args.output, result)
    print(f"{result['counts'].get('killed', 0)} of {result['mutants']} mutants killed "
          f"(kill rate {result['kill_rate']:.3f} of killed + survived, {result['kill_rate_of_all']:.3f} of all); "
          f"{result['survivors_unexplained']} survivors without a reason → {args.output}")


if __name__ == "__main__":
    main()
