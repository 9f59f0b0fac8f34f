"""The ``dht`` command: parse arguments and call the library. No logic lives here.

Parsing and the checks that need no model import neither the methods nor torch (the flags come from
``dht/cli/methods.json``, see ``dht.cli.flags``), so a bad command line fails at once; the library is
imported after them.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import NoReturn

from dht.cli.flags import MethodFields, add_method_flags, check_method_flags, given_options, method_fields
from dht.training.config import RunConfig, TrainConfig

EXIT_BAD_INPUT = 2
DEVICE_HELP = "auto (the GPU when torch sees one, else the CPU), cpu, or cuda[:N]"


class OneLineParser(argparse.ArgumentParser):
    """argparse, with an error in one line naming the command, what is wrong and where help is (argparse
    prints the whole usage first: 26 lines for train). Subcommands' parsers are of this class too."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def port_number(text: str) -> int:
    """A TCP port, 0-65535 (argparse type)."""
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (0-65535)")
    return int(text)


def build_parser(methods: MethodFields | None = None) -> argparse.ArgumentParser:
    """The ``dht`` parser, its method flags from ``methods`` (default: ``method_fields()``)."""
    methods = method_fields() if methods is None else methods
    # allow_abbrev=False: a prefix of a flag (--dep for --depth) is an error, never another method's option.
    parser = OneLineParser(prog="dht", description="Dynamic Hierarchical Transformer classifiers.",
                           allow_abbrev=False)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a method on a dataset folder, then evaluate it",
                                allow_abbrev=False)
    defaults = TrainConfig()
    train.add_argument("--method", default="full", choices=list(methods), help="what to train (default: full)")
    add_method_flags(train.add_argument_group("method options (each taken only by the methods named)"), methods)
    train.add_argument("--data", default="", help="dataset folder with train.csv, test.csv, classes.txt "
                                                   "(default: the embedded AG News)")
    train.add_argument("--backbone", default="minilm-l6",
                       help="minilm-l6, tiny, bert-base-random, or a local Hugging Face BERT directory")
    train.add_argument("--epochs", type=int, default=defaults.epochs, help=f"(default {defaults.epochs})")
    train.add_argument("--batch-size", type=int, default=defaults.batch_size,
                       help=f"training samples per step (default {defaults.batch_size})")
    train.add_argument("--lr", type=float, default=defaults.lr,
                       help=f"peak learning rate of AdamW (default {defaults.lr:g})")
    train.add_argument("--max-length", type=int, default=defaults.max_length,
                       help=f"tokens per text, [CLS] and [SEP] included (default {defaults.max_length})")
    train.add_argument("--max-train", type=int, default=None, help="train on a seeded subset of N rows")
    train.add_argument("--max-test", type=int, default=None, help="evaluate on a seeded subset of N rows")
    train.add_argument("--holdout", type=int, default=defaults.holdout,
                       help="keep N seeded training rows out of training: dht evaluate --budget sets its knob on "
                            "them (default 0: on training rows)")
    train.add_argument("--seed", type=int, default=defaults.seed, help=f"(default {defaults.seed})")
    train.add_argument("--pooling", default=defaults.pooling, choices=("mean", "cls"))
    train.add_argument("--train-word-embeddings", action="store_true",
                       help="also fine-tune the word-embedding table (slower on CPU; frozen by default)")
    train.add_argument("--output", type=Path, default=None, help="run folder (default: runs/METHOD-TIME)")
    train.add_argument("--resume", action="store_true", help="continue the run in --output from its checkpoint "
                       "(with its own settings: only --device and --quiet may be given with it)")
    train.add_argument("--save-every", type=int, default=defaults.checkpoint_every,
                       help=f"optimizer steps between checkpoints (default {defaults.checkpoint_every}; one also "
                            "ends each epoch)")
    train.add_argument("--device", default="auto", help=DEVICE_HELP)
    train.add_argument("--quiet", action="store_true", help="no progress bars")

    evaluate = commands.add_parser("evaluate", help="re-evaluate a saved run", allow_abbrev=False)
    evaluate.add_argument("run_dir", type=Path)
    evaluate.add_argument("--data", default=None, help="dataset folder (default: the run's own)")
    add_method_flags(evaluate.add_argument_group("inference options (default: the run's own)"), methods,
                     inference_only=True)
    evaluate.add_argument("--budget", type=float, default=None,
                          help="target inference FLOP ratio (all-in): set the method's knob (DHT's cost weight, "
                               "FastBERT's speed) to meet it on training rows (the held-out ones of a run "
                               "trained with --holdout), every class weighted as equally frequent, then evaluate")
    evaluate.add_argument("--oracle", action="store_true",
                          help="also score the oracle routers (cheapest correct route, cheapest agreeing with the "
                               "full model), trying every route on every test sample")
    evaluate.add_argument("--output", type=Path, default=None, help="where to write (default: RUN/evaluation.json)")
    evaluate.add_argument("--device", default="auto", help=DEVICE_HELP)
    evaluate.add_argument("--quiet", action="store_true")
    predict = commands.add_parser("predict", help="classify new texts with a trained run", allow_abbrev=False)
    predict.add_argument("run_dir", type=Path)
    source = predict.add_mutually_exclusive_group()
    source.add_argument("--input", default=None,
                        help="a CSV with a 'text' column (or a dataset split), or a text file with one text per "
                             "line; - for standard input (the default when no --text is given)")
    source.add_argument("--text", action="append", default=None, help="a text to classify (repeatable)")
    predict.add_argument("--output", type=Path, default=None, help="where to write (default: standard output)")
    predict.add_argument("--format", choices=("jsonl", "csv"), default=None,
                         help="output format (default: csv when --output ends in .csv, else jsonl)")
    predict.add_argument("--batch-size", type=int, default=None, help="texts per batch (default: the run's)")
    add_method_flags(predict.add_argument_group("inference options (default: the run's own)"), methods,
                     inference_only=True)
    predict.add_argument("--device", default="auto", help=DEVICE_HELP)
    predict.add_argument("--quiet", action="store_true", help="no progress bar")

    serve = commands.add_parser("serve", help="serve a trained run over HTTP (POST /predict, GET /health, "
                                              "GET /info)", allow_abbrev=False)
    serve.add_argument("run_dir", type=Path)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    serve.add_argument("--port", type=port_number, default=8000)
    serve.add_argument("--max-wait-ms", type=float, default=5.0,
                       help="how long a request waits for others to share its batch (default 5)")
    serve.add_argument("--max-texts", type=int, default=256, help="texts per request at most (default 256)")
    serve.add_argument("--max-chars", type=int, default=20_000, help="characters per text at most")
    serve.add_argument("--batch-size", type=int, default=None, help="texts per model batch (default: the run's)")
    add_method_flags(serve.add_argument_group("inference options (default: the run's own)"), methods,
                     inference_only=True)
    serve.add_argument("--device", default="auto", help=DEVICE_HELP)

    export = commands.add_parser("export", help="write a trained run as a Hugging Face BERT folder (AutoModel "
                                                "loads its encoder), with its head and method state beside",
                                 allow_abbrev=False)
    export.add_argument("run_dir", type=Path)
    export.add_argument("directory", type=Path, help="a new (or empty) folder to write")

    bench = commands.add_parser("bench", help="run every method and write the paper's Tables 1-2 and a Pareto plot",
                                allow_abbrev=False)
    bench.add_argument("--quick", action="store_true", help="1 epoch on 1,000 training and 500 test rows")
    bench.add_argument("--data", default="", help="dataset folder (default: the embedded AG News)")
    bench.add_argument("--backbone", default="minilm-l6")
    bench.add_argument("--output", type=Path, default=Path("runs/bench"))
    bench.add_argument("--seeds", "--seed", type=int, nargs="+", default=[0], help="train and evaluate every run with "
                       "each seed; tables give each seed's row, front.json the means and standard deviations")
    bench.add_argument("--lr", type=float, default=defaults.lr, help="peak learning rate of every run")
    bench.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                       help="only these methods' runs (BL1's always: it is every row's reference); default: all")
    only = bench.add_mutually_exclusive_group()
    only.add_argument("--train-only", action="store_true",
                      help="train what is missing for every seed and stop; time it later, with nothing else running")
    only.add_argument("--points-only", action="store_true",
                      help="only evaluate the trained runs along their knobs and score their oracles, kept in their "
                      "folders for the timing pass (F1 and FLOPs: may run beside training)")
    bench.add_argument("--device", default="auto", help=DEVICE_HELP)
    bench.add_argument("--quiet", action="store_true")

    paths = commands.add_parser("bench-paths", help="Transformer⁻¹: warm-up, steady seconds and switching overhead "
                                "per layer of eager, bucketed, compiled and graph-replayed inference",
                                allow_abbrev=False)
    paths.add_argument("run_dir", type=Path)
    paths.add_argument("--compile", action="store_true", help="also torch.compile the folded layer (slow on a CPU)")
    paths.add_argument("--graphs", action="store_true", help="also replay CUDA graphs (a CUDA device only)")
    modes = ("buckets", "compile", "graphs")  # bench-paths sets these itself, mode by mode
    add_method_flags(paths.add_argument_group("inference options (default: the run's own)"),
                     {"tinv": [f for f in methods.get("tinv", []) if f.name not in modes]}, inference_only=True)
    paths.add_argument("--reference", type=Path, default=None, help="a BL1 run timed in the same process")
    paths.add_argument("--output", type=Path, default=None, help="JSON to write (default RUN/bench_paths.json)")
    paths.add_argument("--device", default="auto", help=DEVICE_HELP)

    table = commands.add_parser("table", help="print the results table of a folder of committed metrics files",
                                allow_abbrev=False)
    table.add_argument("folder", type=Path, nargs="?", default=Path("bench/results/ag_news"))
    table.add_argument("--seeds", action="store_true", help="mean and range over seeds (files in FOLDER/seeds/)")
    return parser


def run_config(args: argparse.Namespace) -> RunConfig:
    """Turn parsed ``train`` arguments into a RunConfig (validated by its dataclasses); a ValueError
    names a flag the method does not take or an invalid value."""
    import dht.methods  # noqa: F401  (registers the built-in methods; imports torch)
    from dht.cli.flags import method_options
    from dht.training.hooks import method_type

    options = method_options(args, method_type(args.method).Options)
    train = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, max_length=args.max_length,
                        max_train=args.max_train, max_test=args.max_test, holdout=args.holdout, seed=args.seed,
                        pooling=args.pooling,
                        freeze_word_embeddings=not args.train_word_embeddings, checkpoint_every=args.save_every)
    return RunConfig(method=args.method, data=args.data, backbone=args.backbone, train=train, options=options)


def summary(metrics: dict) -> str:
    test, train = metrics["test"], metrics["train"]
    return (f"{metrics['method']} on {metrics['dataset']}: accuracy {test['accuracy']:.4f}, "
            f"macro-F1 {test['f1_macro']:.4f}, inference FLOP ratio {test['flop_ratio']:.3f} "
            f"(all-in {test['flop_ratio_all_in']:.3f}), training FLOP ratio {train['flop_ratio']:.3f} "
            f"(all-in {train['flop_ratio_all_in']:.3f}), train {train['seconds']:.0f} s, "
            f"test {test['seconds']:.1f} s")


def routes_line(test: dict, method: str) -> str:
    """'inference paths: 2L12H 35% (accuracy 0.851), ...' for methods whose samples take different paths;
    the method's ``route_legend`` says what a route's name means where it is not a depth and heads."""
    from dht.training.hooks import method_type

    legend = method_type(method).route_legend
    paths = ", ".join(f"{route} {100 * r['share']:.0f}% (accuracy {r['accuracy']:.3f})"
                      for route, r in test.get("routes", {}).items())
    return f"inference paths{f' ({legend})' if legend else ''}: {paths}"


def predict_command(args: argparse.Namespace) -> None:
    """``dht predict``: read every text first (a bad input stops before the model loads), predict, then
    write the whole output at once."""
    from dht.classifier import Classifier, format_predictions, run_classes
    from dht.data import read_texts
    from dht.provenance import write_atomically

    classes = run_classes(args.run_dir)
    if args.text is not None and not all(text.strip() for text in args.text):
        raise ValueError("--text: an empty text; give each --text some words")
    texts = args.text if args.text is not None else read_texts(args.input or "-", len(classes))
    fmt = args.format or ("csv" if args.output is not None and args.output.suffix.lower() == ".csv" else "jsonl")
    classifier = Classifier.load(args.run_dir, device=args.device, batch_size=args.batch_size,
                                 **given_options(args))
    rows = classifier.predict(texts, progress=not args.quiet and args.text is None)
    text = format_predictions(texts, rows, classifier.classes, fmt)
    if args.output is None:
        sys.stdout.write(text)
    else:
        write_atomically(args.output, text)


RESUME_FLAGS = ("--resume", "--output", "--device", "--quiet")  # what may come with --resume: no result changes


def check_train_flags(args: argparse.Namespace, argv: list[str], methods: MethodFields) -> None:
    """What a ``train`` command line can be refused for before anything is imported (ValueError):
    with --resume, every flag typed (``argv``) that would change the run."""
    if args.resume and args.output is None:
        raise ValueError("--resume needs the --output folder of the run to continue")
    if args.resume:
        typed = dict.fromkeys(arg.split("=", 1)[0] for arg in argv if arg.startswith("--"))
        # A run a value that was not finite stopped (dht.training.run_folder.STOPPED_FILE) may resume at a new --lr.
        allowed = RESUME_FLAGS + (("--lr",) if (args.output / "stopped.json").is_file() else ())
        changes = [flag for flag in typed if flag not in allowed]
        if changes:
            raise ValueError(f"--resume continues the saved run with its own settings; drop {', '.join(changes)} "
                             f"(only {', '.join(allowed[2:])} may change)")
    else:
        check_method_flags(args, methods[args.method], args.method)


def _note(message: Warning | str, category: type[Warning], *rest: object, **kwargs: object) -> str:
    return f"dht: note: {message}\n"  # a warning (a backbone's dropped head) as one line, not a traceback


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, `kill`): stops a run as Ctrl-C does, with the shell's exit code 128 + 15."""


def _stop(signum: int, frame: object) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = _note
    argv = sys.argv[1:] if argv is None else argv
    methods = method_fields()
    args = build_parser(methods).parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop)
    try:
        if args.command == "train":
            check_train_flags(args, argv[1:], methods)
        import dht.methods  # noqa: F401  (registers the built-in methods; imports torch, after argument errors)
        from dht.training.loop import evaluate_run, train

        if args.command == "train":
            run = run_config(args)  # option values checked before any data is read
            if args.output is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
                raise ValueError("--output: under torchrun every rank must name the same run folder")
            output = args.output or Path("runs") / f"{args.method}-{time.strftime('%Y%m%d-%H%M%S')}"
            new_lr = args.lr if args.resume and any(a.split("=", 1)[0] == "--lr" for a in argv) else None
            metrics = train(run, output, resume=args.resume, progress=not args.quiet, device=args.device, lr=new_lr)
            if metrics is not None:  # None on the ranks of torchrun but 0, which leave writing to rank 0
                print(summary(metrics))
                if "routes" in metrics["test"]:
                    print(routes_line(metrics["test"], metrics["method"]))
                print(f"run folder: {output}")
        elif args.command == "predict":
            predict_command(args)
        elif args.command == "serve":
            from dht.classifier import Classifier
            from dht.serve import Limits, serve

            limits = Limits(max_texts=args.max_texts, max_chars=args.max_chars, max_wait_ms=args.max_wait_ms)
            serve(Classifier.load(args.run_dir, device=args.device, batch_size=args.batch_size,
                                  **given_options(args)), args.host, args.port, limits)
        elif args.command == "export":
            from dht.classifier import export_run

            written = export_run(args.run_dir, args.directory)
            print(f"{args.directory}: {', '.join(written)} (transformers.AutoModel.from_pretrained loads the encoder)")
        elif args.command == "bench":
            from dht.benchmark import run_bench

            run_bench(args.data, args.backbone, args.output, args.quick, tuple(args.seeds), progress=not args.quiet,
                      device=args.device, lr=args.lr, methods=tuple(args.methods) if args.methods else None,
                      train_only=args.train_only, points_only=args.points_only)
            if args.train_only:
                print("trained; the same command without --train-only times every run and writes the tables")
            elif not args.points_only:
                print((args.output / "front.md").read_text())
            print(f"bench folder: {args.output}")
        elif args.command == "bench-paths":
            from dht.benchmark.paths import bench_paths

            result = bench_paths(args.run_dir, args.compile, args.reference, args.device, args.output, args.graphs,
                                 given_options(args) or None)
            for row in result["modes"]:
                switching = row["switch_overhead_us_per_layer"]
                print(f"{row['mode']:8} warm-up {row['warm_up_seconds']:.1f} s, first pass "
                      f"{row['first_pass_seconds']:.1f} s, steady {row['steady_seconds']:.1f} s, switching "
                      + ("n/a (no sample passed a layer)" if switching is None else f"{switching:.0f} μs/layer")
                      + f", equal to eager within {row['max_log_probability_difference_to_eager']:.1e}")
        elif args.command == "table":
            from dht.report import results_table

            print(results_table(args.folder, seeds=args.seeds))
        else:
            overrides = given_options(args) or None
            result = evaluate_run(args.run_dir, args.data, progress=not args.quiet, overrides=overrides,
                                  device=args.device, budget=args.budget, oracle=args.oracle, output=args.output)
            test = result["test"]
            if "budget" in result:
                found = result["budget"]
                low, high = found["reachable"]
                print(f"budget {found['target']}: {found['option']} = {found['value']:.4g} "
                      f"({found['train_flop_ratio_all_in']:.3f} on {found['train_rows']} "
                      f"{'held-out' if found['rows'] == 'holdout' else 'training'} rows, classes weighted "
                      "equally; "
                      f"this run reaches {low:.3f}-{high:.3f})")
            print(f"{args.run_dir} on {result['dataset']}: accuracy {test['accuracy']:.4f}, "
                  f"macro-F1 {test['f1_macro']:.4f}, FLOP ratio {test['flop_ratio']:.3f} "
                  f"(all-in {test['flop_ratio_all_in']:.3f}), {test['seconds']:.1f} s")
            if "routes" in test:
                print(routes_line(test, result["method"]))
            for name, row in test.get("oracle", {}).items():
                if name != "routes":
                    print(f"{name}: macro-F1 {row['f1_macro']:.4f} at FLOP ratio {row['flop_ratio']:.3f}")
    except (ValueError, FileNotFoundError) as error:  # DataError, BackboneError, bad settings
        print(f"dht: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt as stop:
        hint = {"train": "; continue with --resume (progress since the last checkpoint is lost)",
                "bench": "; the same dht bench continues (finished runs are kept)"}.get(args.command, "")
        print(f"dht: interrupted{hint}", file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(stop, Terminated) else signal.SIGINT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
