"""Load test of `dht serve` on loopback: throughput and p50/p99 latency per run, and nothing lost.

For each RUN: start `dht serve RUN` on a free loopback port (a separate process, as users run it), wait
for GET /health, send ``--warmup`` requests, then ``--requests`` POST /predict requests (``--per-request``
texts each, the embedded AG News test texts in file order) from ``--concurrency`` client threads, each
request bounded by ``--timeout`` seconds. Every answer is compared with `dht predict RUN` on the same
texts (class and route; a mismatch is counted, never hidden), then malformed requests (bad JSON, an empty
list, an oversize request, a non-string text) must each get a 4xx with the server still answering.
Run nothing else meanwhile. The client threads share the machine with the server (on a 2-core laptop
they take part of its CPU), so the figures are what one machine serving itself reaches.

Usage: python bench/serve_load.py RUN [RUN ...] [--requests 400] [--concurrency 16 64] [--per-request 1]
       [--output bench/results/serve_load.json]
       python bench/serve_load.py --table [FILE]   (the markdown table of a results file)
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from dht.data import default_dataset_dir, read_dataset
from dht.provenance import repo_path, write_result

MALFORMED = {  # case -> request body
    "malformed JSON": b'{"texts": ["a",',
    "empty list": b'{"texts": []}',
    "oversize request": json.dumps({"texts": ["a"] * 1000}).encode(),
    "non-string text": b'{"texts": ["a", 7]}',
}


def post(url: str, body: bytes, timeout: float) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(base: str, server: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with code {server.returncode}")
        try:
            with urllib.request.urlopen(base + "/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError("the server did not answer /health in time")


def predicted(run: Path, texts: list[str]) -> list[dict[str, Any]]:
    """`dht predict RUN` on ``texts`` (one per line), the reference answers."""
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "texts.txt"
        source.write_text("".join(text + "\n" for text in texts), encoding="utf-8")
        done = subprocess.run([sys.executable, "-m", "dht", "predict", str(run), "--input", str(source), "--quiet"],
                              capture_output=True, text=True, check=True)
    return [json.loads(line) for line in done.stdout.splitlines()]


def load_one(run: Path, texts: list[str], concurrency: int, args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "dht", "serve", str(run), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_healthy(base, server)
        info = json.loads(urllib.request.urlopen(base + "/info", timeout=10).read())
        chunks = [texts[i:i + args.per_request] for i in range(0, len(texts), args.per_request)]
        for chunk in chunks[:args.warmup]:
            post(base + "/predict", json.dumps({"texts": chunk}).encode(), args.timeout)
        batches_before = json.loads(urllib.request.urlopen(base + "/info", timeout=10).read())["batches"]

        def send(chunk: list[str]) -> tuple[float, int, bytes]:
            start = time.perf_counter()
            try:
                status, body = post(base + "/predict", json.dumps({"texts": chunk}).encode(), args.timeout)
            except OSError:  # a timeout or a refused connection is an error, counted
                status, body = 0, b""
            return time.perf_counter() - start, status, body

        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            answers = list(pool.map(send, chunks))
        seconds = time.perf_counter() - started
        batches = json.loads(urllib.request.urlopen(base + "/info", timeout=10).read())["batches"]
        malformed = {case: post(base + "/predict", body, args.timeout)[0] for case, body in MALFORMED.items()}
        still_serving = post(base + "/predict", b'{"texts": ["still here"]}', args.timeout)[0] == 200
    finally:
        server.terminate()
        server.wait(timeout=30)
    errors = sum(status != 200 for _, status, _ in answers)
    reference = predicted(run, texts)
    mismatches = 0  # answered texts whose class or route differ from dht predict's, or that are missing
    for i, (_, status, body) in enumerate(answers):
        if status == 200:
            want = reference[i * args.per_request:(i + 1) * args.per_request]
            got = json.loads(body)["predictions"]
            mismatches += abs(len(want) - len(got)) + sum(a["label"] != b["label"] or a["route"] != b["route"]
                                                          for a, b in zip(got, want))
    latencies = sorted(1000 * latency for latency, _, _ in answers)
    return {"run": str(run), "method": info["method"], "options": info["options"], "requests": len(chunks),
            "texts_per_request": args.per_request, "concurrency": concurrency, "errors": errors,
            "mismatches": mismatches, "p50_ms": round(statistics.median(latencies), 1),
            "p99_ms": round(latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 1),
            "texts_per_s": round(len(texts) / seconds, 1), "seconds": round(seconds, 2),
            "model_batches": batches - batches_before,
            "malformed_status": malformed, "still_serving": still_serving}


def table(path: Path) -> str:
    """The results file as a markdown table."""
    rows = json.loads(path.read_text(encoding="utf-8"))["result"]
    lines = ["| run | method | concurrency | texts/s | p50 ms | p99 ms | model batches | errors | mismatches |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['run']} | {r['method']} | {r['concurrency']} | {r['texts_per_s']} | {r['p50_ms']} | "
              f"{r['p99_ms']} | {r['model_batches']} | {r['errors']} | {r['mismatches']} |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="*")
    parser.add_argument("--table", type=Path, nargs="?", const=repo_path("bench/results/serve_load.json"))
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--per-request", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--output", type=Path, default=repo_path("bench/results/serve_load.json"))
    args = parser.parse_args()
    if args.table:
        print(table(args.table))
        return
    if not args.runs:
        parser.error("give the run folders to serve")
    test = read_dataset(default_dataset_dir()).test
    texts = [" ".join(text.split()) for text in test.texts[:args.requests * args.per_request]]
    rows = []
    for run, concurrency in ((run, c) for run in args.runs for c in args.concurrency):
        row = load_one(run, texts, concurrency, args)
        rows.append(row)
        print(f"{run}: {row['requests']} requests x {row['texts_per_request']} text(s), concurrency "
              f"{row['concurrency']}: {row['texts_per_s']} texts/s, p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, "
              f"errors {row['errors']}, mismatches {row['mismatches']}, malformed {row['malformed_status']}")
    write_result(args.output, rows)


if __name__ == "__main__":
    main()
