"""One tool: the same flags mean the same thing in every command, and old spellings keep working."""

from __future__ import annotations

import json

import pytest

from tests.cli.harness import assert_failed_cleanly, run


def test_bench_json_is_a_flag_like_elsewhere_and_still_takes_a_file(fixture_bundles, tmp_path):
    bundle = fixture_bundles / "classifier-fp32"
    fast = ["--runs", "2", "--warmup", "0"]
    result = run(["bench", bundle, *fast, "--json"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["schema"] == "liteship.device-bench/1"
    for spelling in (["--json", tmp_path / "a.json"], ["-o", tmp_path / "b.json"]):
        result = run(["bench", bundle, *fast, *spelling], tmp_path)
        assert result.returncode == 0, result.stderr
        assert json.loads(spelling[1].read_text())["schema"] == "liteship.device-bench/1"
    (tmp_path / "afile").write_text("a file\n")
    result = run(["bench", bundle, *fast, "-o", tmp_path / "afile" / "c.json"], tmp_path)
    assert_failed_cleanly(result, exit_code=1, names=("afile",))
    assert "Timing" not in result.stderr  # refused before the benchmark ran


def test_quant_is_a_checked_choice_in_every_converter(fixture_bundles, tmp_path):
    for args in (["convert", "gpt2", fixture_bundles / "gpt2-checkpoint", "--quant", "int3"],
                 ["convert", "bit", tmp_path / "x.npz", "--quant", "int3"],
                 ["convert", "savedmodel", fixture_bundles / "classifier-savedmodel", "--quant", "int3"]):
        result = run(args, tmp_path)
        assert_failed_cleanly(result, exit_code=2, names=("--quant", "int3"))


def test_mean_and_std_take_three_values_after_one_flag(fixture_bundles, tmp_path):
    out = tmp_path / "b"
    result = run(["convert", "savedmodel", fixture_bundles / "classifier-savedmodel", "-o", out,
                  "--mean", "0.485", "0.456", "0.406", "--std", "0.229", "0.224", "0.225"], tmp_path)
    assert result.returncode == 0, result.stderr
    pre = json.loads((out / "manifest.json").read_text())["preprocessing"]
    assert pre["mean"] == [0.485, 0.456, 0.406] and pre["std"] == [0.229, 0.224, 0.225]


def test_gpt2_out_defaults_like_the_other_converters(fixture_bundles, tmp_path):
    result = run(["convert", "gpt2", fixture_bundles / "gpt2-checkpoint", "--max-context", "16"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "gpt2-checkpoint-fp32" / "manifest.json").is_file()


def _commands():
    """(command path, click parameter) for every parameter of every command in the CLI tree."""
    import click

    from liteship.cli import cli

    def walk(cmd, path, ctx):
        if isinstance(cmd, click.Group):
            for name in cmd.list_commands(ctx):
                yield from walk(cmd.get_command(ctx, name), [*path, name], ctx)
        else:
            yield " ".join(path), cmd

    return list(walk(cli, [], click.Context(cli)))


def test_every_numeric_option_is_checked_one_way():
    """click's INT/FLOAT and IntRange/FloatRange let nan, inf or out-of-range values through (FloatRange(min=0)
    takes nan); every numeric parameter must be liteship.options.Number: finite, bounded, a usage error."""
    import click

    from liteship.options import Number

    unchecked = [f"{path} {p.opts[0]}" for path, cmd in _commands() for p in cmd.params
                 if isinstance(p.type, (click.types.IntParamType, click.types.FloatParamType))
                 and not isinstance(p.type, Number)]
    assert unchecked == []
    unbounded = [f"{path} --threads" for path, cmd in _commands() for p in cmd.params
                 if "--threads" in p.opts and getattr(p.type, "max", None) is None]
    assert unbounded == []  # 100000 interpreter threads exhausted the machine


def test_every_command_that_writes_a_file_or_folder_takes_o_out_and_output():
    """The option naming what a command writes answers to -o, --out and --output alike."""
    spellings = {"-o", "--out", "--output"}
    partial = [f"{path} {p.opts}" for path, cmd in _commands() for p in cmd.params
               if set(p.opts) & spellings and not spellings <= set(p.opts)]
    assert partial == []


@pytest.mark.parametrize("args, option", [
    (["check", "{fx}/classifier-fp32", "--budget", "{tmp}/b.toml", "--quant", "fp32,int3"], "--quant"),
    (["compare", "{tmp}/b.toml", "{tmp}/b.toml", "--threshold", "nan"], "--threshold"),
    (["prune", "gpt2", "{fx}/gpt2-checkpoint", "--data", "{tmp}/b.toml", "-o", "{tmp}/p", "--learning-rate", "nan"],
     "--learning-rate"),
    (["prune", "gpt2", "{fx}/gpt2-checkpoint", "--data", "{tmp}/b.toml", "-o", "{tmp}/p", "--seed", "-1"], "--seed"),
    (["qat", "bit", "{tmp}/b.toml", "--data", "{tmp}/b.toml", "-o", "{tmp}/p", "--image-size", "0"], "--image-size"),
])
def test_checked_options_of_check_compare_and_prune(args, option, fixture_bundles, tmp_path):
    (tmp_path / "b.toml").write_text("max_p90_ms = 5\n")
    result = run([a.format(fx=fixture_bundles, tmp=tmp_path) for a in args], tmp_path)
    assert_failed_cleanly(result, exit_code=2, names=(option,))


def test_run_model_and_run_gpt2_print_json(fixture_bundles, tmp_path):
    import numpy as np

    ref = np.load(fixture_bundles / "classifier-fp32.reference.npz")
    np.save(tmp_path / "x.npy", ref["x"][2])
    result = run(["run", "model", fixture_bundles / "classifier-fp32", "--input", tmp_path / "x.npy", "--json"],
                 tmp_path)
    assert result.returncode == 0, result.stderr
    [(name, out)] = json.loads(result.stdout)["outputs"].items()
    assert out["shape"] == [1, 5] and np.abs(np.array(out["values"])[0] - ref["y"][2]).max() < 1e-4
    assert out["argmax"] == int(np.argmax(ref["y"][2])) and out["label"] == "abcde"[out["argmax"]]
    result = run(["run", "gpt2", fixture_bundles / "gpt2-fp32", "--prompt", "the", "--max-new-tokens", "3",
                  "--json"], tmp_path)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["prompt"] == "the" and len(doc["token_ids"]) == 3 and doc["finish_reason"] == "length"


def test_check_prints_json_and_takes_o(fixture_bundles, tmp_path):
    (tmp_path / "b.toml").write_text("max_file_size_mb = 1\n")
    result = run(["check", fixture_bundles / "classifier-fp32", "--budget", tmp_path / "b.toml", "-o",
                  tmp_path / "res", "--runs", "2", "--warmup", "0", "--json"], tmp_path)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["schema"] == "liteship.check/1" and doc["passed"]
    assert json.loads((tmp_path / "res" / "check.json").read_text())["cells"] == doc["cells"]
