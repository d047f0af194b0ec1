"""One tool: the same flags mean the same thing in every command, and old spellings keep working."""

from __future__ import annotations

import json

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
