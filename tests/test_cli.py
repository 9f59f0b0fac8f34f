"""The CLI's flags come from the methods' typed options: a flag a method does not take, or a bad value,
stops with one line and exit code 2 before any data is read."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import dht.training.loop
import dht.training.setup
from dht.cli import build_parser, main
from dht.cli.flags import MANIFEST, manifest_of, registry_fields
from dht.methods.distil import DistilOptions
from dht.methods.fastbert import FastBERTOptions
from dht.training.hooks import METHODS
from dht.training.options import MethodOptions


@pytest.fixture
def no_data(monkeypatch):
    """Fail the test if a run reads its data or its backbone."""
    def forbidden(*args, **kwargs):
        raise AssertionError("data or backbone read before the options were checked")
    monkeypatch.setattr(dht.training.setup, "read_dataset", forbidden)
    monkeypatch.setattr(dht.training.setup, "resolve_backbone", forbidden)


def error_of(capsys, *argv: str) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dht: error:")  # one line
    return err


def test_a_flag_the_method_does_not_take_is_named(no_data, tmp_path, capsys):
    err = error_of(capsys, "train", "--method", "full", "--speed", "0.5", "--backbone", "tiny",
                   "--output", str(tmp_path / "run"))
    assert "--method full does not take --speed" in err
    err = error_of(capsys, "train", "--method", "full", "--config", "nonsense", "--speed", "7", "--layers", "99",
                   "--backbone", "tiny", "--output", str(tmp_path / "run"))
    assert "--config, --speed, --layers" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv, message", [
    (["--method", "distil"], "--teacher is required"),
    (["--method", "fastbert", "--teacher", "no/such/run"], "--teacher no/such/run: not a finished run"),
    (["--method", "fastbert", "--teacher", "TEACHER", "--speed", "7"], "--speed must be in [0, 1]"),
    (["--method", "distil", "--teacher", "TEACHER", "--temperature", "0"], "--temperature must be > 0"),
    (["--method", "dht", "--config", "no-such.json"], "--config 'no-such.json': not one of"),
])
def test_options_are_checked_before_any_data_is_read(no_data, tmp_path, capsys, argv, message):
    teacher = tmp_path / "teacher"  # what the check of --teacher looks at: the files a finished run has
    teacher.mkdir()
    (teacher / "run.json").write_text("{}")
    (teacher / "model.safetensors").write_text("")
    argv = [str(teacher) if arg == "TEACHER" else arg for arg in argv]
    assert message in error_of(capsys, "train", *argv, "--backbone", "tiny", "--output", str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_a_dht_config_file_is_validated_before_the_data(no_data, tmp_path, capsys):
    config = tmp_path / "search.json"
    config.write_text("{not json")
    assert "not valid JSON" in error_of(capsys, "train", "--method", "dht", "--config", str(config),
                                        "--backbone", "tiny", "--output", str(tmp_path / "run"))


def test_the_command_line_tool_exits_2_without_a_teacher(tmp_path):
    done = subprocess.run([sys.executable, "-m", "dht", "train", "--method", "distil", "--backbone", "tiny",
                           "--output", str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--teacher is required" in done.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv, message", [
    (["--method", "distil"], "--teacher is required"),
    (["--method", "fastbert", "--teacher", "no/such/run"], "--teacher no/such/run: not a finished run"),
    (["--method", "full", "--speed", "0.5"], "--method full does not take --speed"),
])
def test_a_bad_command_line_is_refused_without_importing_torch(tmp_path, argv, message):
    """What makes the refusal fast (bench/cli_startup.py times it): neither the methods nor torch load."""
    code = ("import sys; from dht.cli import main; code = main(sys.argv[1:]); "
            "print('loaded:', sorted(m for m in ('torch', 'dht.methods', 'dht.training.hooks') if m in sys.modules)); "
            "sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", code, "train", *argv, "--output", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and message in done.stderr
    assert "loaded: []" in done.stdout


def test_the_flag_manifest_is_the_registry():
    """``dht/cli/methods.json`` lets the CLI parse without importing the methods; it must say what they
    declare (after changing a method's options: python -m dht.cli.manifest)."""
    import dht.methods  # noqa: F401

    written = json.loads(MANIFEST.read_text(encoding="utf-8"))
    builtin = {name: method for name, method in METHODS.items() if method.__module__.startswith("dht.methods.")}
    assert {"full", "distil", "fastbert", "dht"} <= set(builtin)
    assert written == manifest_of(registry_fields(builtin)), "stale: run python -m dht.cli.manifest"


def test_options_from_json_refuse_unknown_keys_and_wrong_types():
    assert DistilOptions.from_dict({"layers": 3, "temperature": 2}, "distil") == DistilOptions(layers=3,
                                                                                               temperature=2.0)
    with pytest.raises(ValueError, match="method distil takes no option colour"):
        DistilOptions.from_dict({"colour": 1}, "distil")
    with pytest.raises(ValueError, match="--layers must be int"):
        DistilOptions.from_dict({"layers": "3"}, "distil")
    with pytest.raises(ValueError, match="--speed must be float"):
        FastBERTOptions.from_dict({"speed": True}, "fastbert")
    assert DistilOptions.from_dict({"layers": None}, "distil").layers is None
    with pytest.raises(ValueError, match="takes no option x .it takes: none"):
        MethodOptions.from_dict({"x": 1}, "full")


def test_every_registered_option_is_a_flag_with_help_and_a_default_of_its_type():
    parser_flags = {action.option_strings[0] for action in build_parser()._subparsers._group_actions[0]
                    .choices["train"]._actions if action.option_strings}
    for method in METHODS.values():
        for field in method.Options.fields():
            assert field.help and field.flag in parser_flags, (method.name, field.name)
            assert field.coerce(field.default) == field.default  # the default has the declared type
        method.Options()  # the defaults are valid together


def test_resume_refuses_method_flags(tmp_path, capsys):
    err = error_of(capsys, "train", "--resume", "--output", str(tmp_path / "run"), "--layers", "3")
    assert "--resume continues the saved run with its own settings; drop --layers" in err


def test_evaluate_refuses_before_loading(monkeypatch, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text('{"run": {"method": "fastbert"}}')

    def forbidden(*args, **kwargs):
        raise AssertionError("the run was loaded before the flags were checked")
    monkeypatch.setattr(dht.training.loop, "load_run", forbidden)
    assert "--budget sets --speed itself" in error_of(capsys, "evaluate", str(run), "--budget", "0.5",
                                                      "--speed", "0.3")
    assert "--budget must be in (0, 1.5]" in error_of(capsys, "evaluate", str(run), "--budget", "2")
    (run / "run.json").write_text('{"run": {"method": "full"}}')
    assert "has no knob" in error_of(capsys, "evaluate", str(run), "--budget", "0.5")
    assert "has one route" in error_of(capsys, "evaluate", str(run), "--oracle")


def test_a_flag_prefix_is_not_taken_for_a_flag(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["train", "--method", "fastbert", "--spe", "0.5", "--output", str(tmp_path / "run")])
    assert stop.value.code == 2 and "unrecognized arguments: --spe" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["train", "--epochs", "abc"],
     "dht train: error: argument --epochs: invalid int value: 'abc' (see dht train --help)"),
    (["serve", "runs/x", "--port", "99999"], "argument --port: '99999' is not a port (0-65535)"),
    (["serve", "runs/x", "--port", "-1"], "argument --port: '-1' is not a port"),
    (["bogus"], "dht: error: argument command: invalid choice: 'bogus'"),
])
def test_a_flag_argparse_refuses_is_one_line_and_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and message in err, err


def test_the_paths_line_says_what_a_route_means_where_it_is_not_a_depth():
    from dht.cli import routes_line

    test = {"routes": {"k1.5": {"share": 0.25, "accuracy": 0.5}}}
    assert routes_line(test, "acm") == ("inference paths (k: the learners a token runs per layer, the text's mean): "
                                        "k1.5 25% (accuracy 0.500)")
    assert routes_line({"routes": {"2L12H": {"share": 1.0, "accuracy": 0.9}}}, "dht") == \
        "inference paths: 2L12H 100% (accuracy 0.900)"
