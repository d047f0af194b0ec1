"""`liteship check`: budget parsing, every limit kind (pass, fail, missing), exit codes, a failing device next to a
working one, resume after an interrupt, reuse of a conversion. Devices: the local host and, for the failing one,
an SSH target whose port nothing listens on (a real refused connection)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from liteship.device import check as check_module
from liteship.device.bench import BenchSettings
from liteship.device.budget import LIMITS, BudgetError, judge, load_budget, measurements, parse_budget
from liteship.device.check import RESULTS_FILE, ConvertOptions, run_check

FAST = BenchSettings(runs=3, warmup=1, threads=1)
DEAD_DEVICE = "ssh:nobody@127.0.0.1:9"  # the discard port: nothing listens, so ssh is refused at once


# ---- budgets ------------------------------------------------------------------------------------------------------

def test_budget_global_and_per_device_limits(tmp_path):
    path = tmp_path / "budget.toml"
    path.write_text('max_p90_ms = 5\nmin_agreement_pct = 95\nmax_file_size_mb = 2.5\n'
                    '[device."adb:PHONE"]\nmax_p90_ms = 40\nmin_decode_tok_s = 10\n')
    budget = load_budget(path)
    assert budget.limits_for("local") == {"max_file_size_mb": 2.5, "max_p90_ms": 5.0, "min_agreement_pct": 95.0}
    assert budget.limits_for("adb:PHONE") == {"max_file_size_mb": 2.5, "max_p90_ms": 40.0,
                                              "min_decode_tok_s": 10.0, "min_agreement_pct": 95.0}
    # a device named with spec parameters keeps its table
    assert budget.limits_for("adb:PHONE?python=/x/python3") == budget.limits_for("adb:PHONE")


def test_model_specific_limits_apply_to_their_models_only(tmp_path):
    budget = parse_budget("max_p90_ms = 5\nmin_decode_tok_s = 10\nmax_perplexity_increase_pct = 3\n"
                          "max_accuracy_drop_pct = 1\nmin_agreement_pct = 90\n")
    assert list(budget.limits_for("local", "gpt2")) == ["max_p90_ms", "min_decode_tok_s",
                                                        "max_perplexity_increase_pct", "min_agreement_pct"]
    for family in ("classifier", "bit"):
        assert list(budget.limits_for("local", family)) == ["max_p90_ms", "max_accuracy_drop_pct",
                                                            "min_agreement_pct"]


@pytest.mark.parametrize("text, message", [
    ("max_p90 = 5\n", "unknown key 'max_p90'"),
    ('[device."local"]\nmax_latency = 1\n', "unknown key 'max_latency' in [device.\"local\"]"),
    ("max_p90_ms = 'fast'\n", "max_p90_ms must be a number >= 0, not 'fast'"),
    ("max_p90_ms = -1\n", "max_p90_ms must be a number >= 0"),
    ("max_p90_ms = true\n", "max_p90_ms must be a number >= 0"),
    ("max_p90_ms = \n", "not valid TOML"),
    ("device = 3\n", "'device' must be a table"),
])
def test_budget_errors_name_the_key_and_the_file(tmp_path, text, message):
    path = tmp_path / "budget.toml"
    path.write_text(text)
    with pytest.raises(BudgetError) as err:
        load_budget(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)


BENCH_ENTRY = {"ok": True, "bench": {"latency_ms": {"p90": 4.0, "p99": 6.0}, "init_ms": 100.0,
                                     "peak_rss_bytes": 64 * 2**20, "model_rss_bytes": 24 * 2**20,
                                     "generation": {"decode_tok_s": 30.0, "prefill_tok_s": 300.0}}}
EVALUATION = {"accuracy_drop_pct": 0.5, "perplexity_increase_pct": 2.0, "agreement_pct": 97.0}
# key -> (a limit the measurement above meets, one it breaks)
PASS_FAIL = {"max_file_size_mb": (2.0, 1.0), "max_peak_rss_mb": (64.0, 63.0), "max_model_rss_mb": (24.0, 20.0),
             "max_p90_ms": (4.0, 3.9),
             "max_p99_ms": (7.0, 5.0), "max_init_ms": (150.0, 99.0), "min_decode_tok_s": (30.0, 31.0),
             "min_prefill_tok_s": (200.0, 400.0), "max_accuracy_drop_pct": (1.0, 0.4),
             "max_perplexity_increase_pct": (5.0, 1.0), "min_agreement_pct": (95.0, 99.0)}


@pytest.mark.parametrize("key", list(LIMITS))
def test_every_limit_kind_passes_fails_and_fails_when_missing(key):
    measured = measurements(BENCH_ENTRY, EVALUATION, size_bytes=1_500_000)
    ok, bad = PASS_FAIL[key]
    [good] = judge({key: ok}, measured)
    [over] = judge({key: bad}, measured)
    assert good.passed and good.margin >= 0
    assert not over.passed and over.margin < 0
    assert abs(good.margin - over.margin) == pytest.approx(abs(ok - bad))  # the margin is in the limit's unit
    [missing] = judge({key: ok}, measurements({"ok": True, "bench": {}}, {}, None))
    assert not missing.passed and missing.measured is None and "not measured" in missing.note


# ---- the run ------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def labeled(fixture_bundles, tmp_path_factory):
    """Random 12x12 images in class folders a..e (the test classifier's labels): accuracy is whatever it is; the
    tests need the measurement and the agreement between variants, not a good model."""
    from PIL import Image

    root = tmp_path_factory.mktemp("labeled")
    rng = np.random.default_rng(3)
    for i in range(20):
        label = "abcde"[i % 5]
        (root / label).mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(root / label / f"{i}.png")
    return root


@pytest.fixture
def bundles(fixture_bundles, tmp_path):
    """Copies of the fp32 and int8 classifier bundles (the same source) under short names."""
    out = {}
    for q in ("fp32", "int8"):
        out[q] = tmp_path / f"clf-{q}"
        shutil.copytree(fixture_bundles / f"classifier-{q}", out[q])
    return out


def budget(tmp_path, text):
    path = tmp_path / "budget.toml"
    path.write_text(text)
    return load_budget(path)


def test_check_passes_and_fails_with_measured_values(bundles, labeled, tmp_path):
    loose = budget(tmp_path, "max_file_size_mb = 1\nmax_p90_ms = 1000\nmax_p99_ms = 1000\nmax_init_ms = 10000\n"
                             "max_peak_rss_mb = 100000\nmax_accuracy_drop_pct = 100\nmin_agreement_pct = 0\n")
    doc = run_check([str(bundles["fp32"]), str(bundles["int8"])], loose, devices=["local"], quants=[],
                    results_dir=tmp_path / "res", settings=FAST, data=labeled)
    assert doc["passed"] and [c["passed"] for c in doc["cells"]] == [True, True]
    assert json.loads((tmp_path / "res" / RESULTS_FILE).read_text())["schema"] == "liteship.check/1"
    int8 = doc["variants"]["clf-int8"]["eval"]
    assert int8["baseline"] == "clf-fp32" and 0 <= int8["agreement_pct"] <= 100 and int8["images"] == 20
    assert doc["variants"]["clf-fp32"]["eval"]["agreement_pct"] == 100.0  # the baseline against itself
    cell = doc["cells"][1]
    p90 = {v["key"]: v for v in cell["verdicts"]}["max_p90_ms"]
    assert p90["measured"] == cell["entry"]["bench"]["latency_ms"]["p90"] and p90["margin"] == 1000 - p90["measured"]

    # The same results judged against a tight budget: no new benchmark, every cell fails on file size.
    tight = budget(tmp_path, "max_file_size_mb = 0.001\n")
    said = []
    doc = run_check([str(bundles["fp32"]), str(bundles["int8"])], tight, devices=["local"], quants=[],
                    results_dir=tmp_path / "res", settings=FAST, data=labeled, progress=said.append)
    assert not doc["passed"]
    assert not [m for m in said if "benchmarking" in m or "evaluating" in m], said
    assert sum("done in an earlier run" in m for m in said) == 2
    assert [v["passed"] for c in doc["cells"] for v in c["verdicts"]] == [False, False]


def test_a_failing_device_keeps_the_others_and_exits_1(bundles, tmp_path):
    path = tmp_path / "budget.toml"
    path.write_text("max_p90_ms = 1000\n")
    res = subprocess.run([sys.executable, "-c", "from liteship.cli import main; main()", "check",
                          str(bundles["int8"]), "--budget", str(path), "-d", "local", "-d", DEAD_DEVICE,
                          "--runs", "3", "--warmup", "1", "--results", str(tmp_path / "res")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 1, res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("error: 1 of 2 cells over budget")
    assert "Traceback" not in res.stderr
    table = res.stdout.splitlines()
    assert any(line.startswith("clf-int8") and "local" in line and " pass " in line for line in table)
    assert any(DEAD_DEVICE in line and "FAIL (device)" in line and "no result" in line for line in table)
    doc = json.loads((tmp_path / "res" / RESULTS_FILE).read_text())
    local, dead = doc["cells"]
    assert local["passed"] and local["entry"]["bench"]["latency_ms"]["samples"]
    assert not dead["ok"] and "connection refused" in dead["error"]

    # Exit 0 when every cell passes.
    res = subprocess.run([sys.executable, "-c", "from liteship.cli import main; main()", "check",
                          str(bundles["int8"]), "--budget", str(path), "--runs", "3", "--results",
                          str(tmp_path / "res2")], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "1 of 1 cells within budget" in res.stdout


def test_bad_budget_is_one_line_exit_1_before_any_work(bundles, tmp_path):
    path = tmp_path / "budget.toml"
    path.write_text("max_p90_ms = 5\nmax_rss = 3\n")
    res = subprocess.run([sys.executable, "-c", "from liteship.cli import main; main()", "check",
                          str(bundles["int8"]), "--budget", str(path), "--results", str(tmp_path / "res")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and res.stderr.count("\n") == 1
    assert res.stderr.startswith(f"error: {path}: unknown key 'max_rss'")
    assert not (tmp_path / "res").exists()


def test_interrupted_run_resumes_without_redoing_finished_cells(bundles, tmp_path, monkeypatch):
    loose = budget(tmp_path, "max_p90_ms = 1000\n")
    real = check_module.bench_targets
    calls = []

    def interrupted(bundle, specs, settings, **kw):
        calls.append(Path(bundle).name)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C during the second cell
        return real(bundle, specs, settings, **kw)

    monkeypatch.setattr(check_module, "bench_targets", interrupted)
    inputs = [str(bundles["fp32"]), str(bundles["int8"])]
    with pytest.raises(KeyboardInterrupt):
        run_check(inputs, loose, devices=["local"], quants=[], results_dir=tmp_path / "res", settings=FAST)
    saved = json.loads((tmp_path / "res" / RESULTS_FILE).read_text())
    assert [(c["variant"], c["ok"]) for c in saved["cells"]] == [("clf-fp32", True)]
    first = saved["cells"][0]["entry"]["bench"]["latency_ms"]["samples"]

    calls.clear()
    monkeypatch.setattr(check_module, "bench_targets", lambda *a, **kw: (calls.append(Path(a[0]).name),
                                                                         real(*a, **kw))[1])
    doc = run_check(inputs, loose, devices=["local"], quants=[], results_dir=tmp_path / "res", settings=FAST)
    assert calls == ["clf-int8"] and doc["passed"]
    assert doc["cells"][0]["entry"]["bench"]["latency_ms"]["samples"] == first  # kept, not re-measured

    # Other benchmark settings are other measurements: every cell runs again.
    calls.clear()
    run_check(inputs, loose, devices=["local"], quants=[], results_dir=tmp_path / "res",
              settings=BenchSettings(runs=4, warmup=1, threads=1))
    assert calls == ["clf-fp32", "clf-int8"]


def test_a_source_is_converted_once_per_mode_and_reused(fixture_bundles, tmp_path, monkeypatch):
    pytest.importorskip("tensorflow")
    monkeypatch.setenv("LITESHIP_CACHE", str(tmp_path / "cache"))
    import liteship.convert.cli as convert_cli

    real = convert_cli.convert_to_bundle
    converted = []

    def counting(saved_model, **kw):
        converted.append(kw["quant"].value)
        return real(saved_model, **kw)

    monkeypatch.setattr(convert_cli, "convert_to_bundle", counting)
    source = tmp_path / "clf-savedmodel"
    shutil.copytree(fixture_bundles / "classifier-savedmodel", source)
    loose = budget(tmp_path, "max_file_size_mb = 1\n")
    run = dict(devices=["local"], quants=["fp32", "dynamic-int8"], settings=FAST)
    doc = run_check([str(source)], loose, results_dir=tmp_path / "a", **run)
    assert converted == ["fp32", "dynamic-int8"]
    assert sorted(doc["variants"]) == ["clf-savedmodel-dynamic-int8", "clf-savedmodel-fp32"]
    assert {v["quantization"] for v in doc["variants"].values()} == {"fp32", "dynamic-int8"}

    doc2 = run_check([str(source)], loose, results_dir=tmp_path / "b", **run)  # a fresh results folder
    assert converted == ["fp32", "dynamic-int8"]  # nothing converted again
    assert {v["bundle"] for v in doc2["variants"].values()} == {v["bundle"] for v in doc["variants"].values()}

    (source / "extra.txt").write_text("a changed source is another source")
    run_check([str(source)], loose, results_dir=tmp_path / "c", **dict(run, quants=["fp32"]))
    assert converted == ["fp32", "dynamic-int8", "fp32"]
    assert ConvertOptions(max_context=8) != ConvertOptions()
    key = check_module.conversion_key
    assert key("s", "gpt2", "fp32", ConvertOptions(max_context=8)) != key("s", "gpt2", "fp32", ConvertOptions())


def test_gpt2_source_end_to_end(tmp_path_factory, tmp_path, monkeypatch):
    """A GPT-2 checkpoint folder converted in two modes, benchmarked, evaluated on a text against fp32: the
    GPT-2 limits (tok/s, perplexity change, agreement) are measured and equal what eval gpt2 computes."""
    pytest.importorskip("tensorflow")
    from liteship.runtime.text_eval import evaluate_text
    from tests.gpt2_fixtures import TRAINING_TEXT, gpt2_bundles

    monkeypatch.setenv("LITESHIP_CACHE", str(tmp_path / "cache"))
    root = gpt2_bundles(tmp_path_factory)
    text = tmp_path / "text.txt"
    text.write_text(TRAINING_TEXT)
    gpt2_budget = budget(tmp_path, "min_decode_tok_s = 1\nmin_prefill_tok_s = 1\nmax_perplexity_increase_pct = 50\n"
                                   "min_agreement_pct = 50\nmax_accuracy_drop_pct = 0\n")
    doc = run_check([str(root / "gpt2-checkpoint")], gpt2_budget, devices=["local"], quants=["fp32", "dynamic-int8"],
                    results_dir=tmp_path / "res", settings=FAST, data=text,
                    options=ConvertOptions(max_context=64, prefill_len=8))
    assert doc["passed"], [c["verdicts"] for c in doc["cells"]]
    fp32, int8 = doc["variants"]["gpt2-checkpoint-fp32"], doc["variants"]["gpt2-checkpoint-dynamic-int8"]
    assert int8["eval"]["baseline"] == "gpt2-checkpoint-fp32"
    want = evaluate_text(int8["bundle"], text, reference=fp32["bundle"], threads=1)
    assert int8["eval"]["perplexity"] == pytest.approx(want["perplexity"], rel=1e-9)
    assert int8["eval"]["perplexity_increase_pct"] == pytest.approx(want["reference"]["perplexity_change_pct"])
    assert int8["eval"]["agreement_pct"] == pytest.approx(100 * want["reference"]["top1_agreement"])
    keys = [[v["key"] for v in c["verdicts"]] for c in doc["cells"]]
    assert keys == [["min_decode_tok_s", "min_prefill_tok_s", "max_perplexity_increase_pct", "min_agreement_pct"]] * 2
    gen = doc["cells"][0]["entry"]["bench"]["generation"]
    # the report's contexts below the bundle's 64, and the default decode context (256) capped at its last slot
    assert set(gen["decode_tok_s_by_context"]) == {"32", "63"}
