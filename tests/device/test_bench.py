"""Benchmarks on devices end to end: the loopback sshd "board", the local target, several at once."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from liteship.device.bench import SCHEMA, BenchSettings, bench_targets
from liteship.device.report import markdown_report
from liteship.errors import DeviceError
from liteship.runtime.files import write_json_atomic
from tests.device.fake_benchmark_model import python_fake


def assert_one_peak_rss(entry: dict) -> None:
    """One peak RSS per run, in the bench record, with the model's share of it; none beside it in the run record."""
    bench = entry["bench"]
    assert "peak_rss_bytes" not in entry["run"] and "peak_rss_bytes" not in (bench.get("generation") or {})
    assert bench["peak_rss_bytes"] > 10 * 2**20  # a python process with numpy and an interpreter
    assert 0 <= bench["model_rss_bytes"] < bench["peak_rss_bytes"]
    assert bench["baseline_rss_bytes"] + bench["model_rss_bytes"] == bench["peak_rss_bytes"]


def _settings(**kw) -> BenchSettings:
    return BenchSettings(**{"runs": 5, "warmup": 1, **kw})


def test_python_runner_over_ssh_end_to_end(ssh_env, tiny_bundle, remote_python, tmp_path):
    workdir = tmp_path / "wd"
    settings = _settings(python=remote_python, workdir=str(workdir), cores="big")
    doc = bench_targets(tiny_bundle, ["ssh:board"], settings)
    assert doc["schema"] == SCHEMA
    [entry] = doc["results"]
    assert entry["ok"], entry["error"]
    bench = entry["bench"]
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    assert bench["schema"] == "liteship.bench/1"
    assert bench["runs"] == 5 and len(bench["latency_ms"]["samples"]) == 5
    assert bench["model"]["sha256"] == manifest["files"]["model.tflite"]["sha256"]
    assert bench["model"]["path"] == f"{workdir}/bundles/tiny-classifier/model.tflite"
    assert "litert" in bench["runtime"]["backend"]
    assert_one_peak_rss(entry)
    # it ran from the pushed runtime zipapp under run_bench.sh, which recorded the pinning policy
    assert ".pyz bench " in entry["run"]["command"] and entry["run"]["cores_policy"] == "big"
    assert entry["device"]["python"]["path"] == remote_python
    assert sorted(entry["push"]["sent"]) == sorted([*manifest["files"], "manifest.json"])  # a fresh workdir: all
    assert list((workdir / "results").iterdir()) == []  # result files are removed once read
    [pyz] = (workdir / "runtime").glob("liteship-runtime-*.pyz")

    # Again: nothing is sent twice (bundle unchanged, runtime and script cached by hash).
    stamp = pyz.stat().st_mtime_ns
    again = bench_targets(tiny_bundle, ["ssh:board"], settings)["results"][0]
    assert again["ok"] and again["push"]["unchanged"]
    assert pyz.stat().st_mtime_ns == stamp


def test_parallel_targets_one_failing_keeps_the_others(ssh_env, tiny_bundle, remote_python, tmp_path):
    settings = _settings(python=remote_python, workdir=str(tmp_path / "wd"))
    doc = bench_targets(tiny_bundle, ["local", "ssh:board", "ssh:board-changed"], settings)
    by_target = {e["target"]: e for e in doc["results"]}
    assert [e["target"] for e in doc["results"]] == ["local", "ssh:board", "ssh:board-changed"]
    assert by_target["local"]["ok"] and by_target["local"]["bench"]["runs"] == 5
    assert by_target["ssh:board"]["ok"] and by_target["ssh:board"]["bench"]["runs"] == 5
    failed = by_target["ssh:board-changed"]
    assert not failed["ok"] and "host key CHANGED" in failed["error"] and failed["bench"] is None

    out = write_json_atomic(tmp_path / "results.json", doc)
    assert json.loads(out.read_text())["results"][2]["error"] == failed["error"]
    report = markdown_report(doc)
    assert "| local |" in report and "| ssh:board |" in report
    assert "## Failed" in report and "**ssh:board-changed**: the host key CHANGED" in report


def test_missing_python_on_the_device_is_the_entry_error(ssh_env, tiny_bundle, tmp_path):
    doc = bench_targets(tiny_bundle, ["ssh:board"], _settings(python="no-such-python3", workdir=str(tmp_path)))
    [entry] = doc["results"]
    assert not entry["ok"]
    assert entry["error"].startswith("ssh:board: no no-such-python3 on the device")
    assert "--benchmark-binary" in entry["error"]
    assert entry["device"]["abi"]  # the probe still came back


def test_python_per_device_wins_over_the_global_option(ssh_env, tiny_bundle, remote_python, tmp_path):
    """Regression: one --python applied to every --device (local included), so devices with their Python in
    different places could not share a run. ``?python=`` names one device's; --python stays the default."""
    from urllib.parse import quote as pct

    settings = _settings(python="no-such-python3", workdir=str(tmp_path / "wd"))
    spec = f"ssh:board?python={pct(remote_python)}"
    doc = bench_targets(tiny_bundle, [spec, "ssh:board"], settings)
    own, default = doc["results"]
    assert own["ok"], own["error"]
    assert own["target"] == spec and own["device"]["python"]["path"] == remote_python
    assert own["bench"]["runs"] == 5
    assert not default["ok"] and "no no-such-python3 on the device" in default["error"]


def test_probe_cli_takes_the_python_from_the_spec(ssh_env, remote_python, tmp_path):
    from click.testing import CliRunner

    from liteship.device.cli import probe

    result = CliRunner().invoke(probe, [f"ssh:board?python={remote_python}", "--json", "--workdir", str(tmp_path),
                                        "--python", "no-such-python3"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["python"]["path"] == remote_python


@pytest.mark.parametrize("spec, message", [
    ("ssh:board?python=", "'python=' is not NAME=VALUE"),
    ("ssh:board?python=-c", "python=-c is not an interpreter path"),
    ("ssh:board?pyhton=/usr/bin/python3", "unknown parameter 'pyhton' (ssh devices take python)"),
    ("local?python=/a&python=/b", "python is given twice"),
])
def test_bad_python_parameters_are_one_line_errors(spec, message, capsys):
    from liteship.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["device", "probe", spec])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.strip().splitlines() == [f"error: bad device {spec!r}: {message}"]


def test_local_python_from_the_spec_must_exist(tiny_bundle, tmp_path):
    settings = _settings(workdir=str(tmp_path / "wd"))
    [entry] = bench_targets(tiny_bundle, [f"local?python={tmp_path}/nope/python3"], settings)["results"]
    assert not entry["ok"] and f"no {tmp_path}/nope/python3 on the device" in entry["error"]
    [entry] = bench_targets(tiny_bundle, [f"local?python={sys.executable}"], settings)["results"]
    assert entry["ok"], entry["error"]


def test_benchmark_model_runner_pushes_once_and_parses(ssh_env, tiny_bundle, tmp_path):
    binary = tmp_path / "benchmark_model"
    binary.write_text(python_fake(sys.executable))
    binary.chmod(0o755)
    workdir = tmp_path / "wd"
    settings = _settings(benchmark_binary=str(binary), threads=1, workdir=str(workdir), runs=7)
    [entry] = bench_targets(tiny_bundle, ["ssh:board"], settings)["results"]
    assert entry["ok"], entry["error"]
    assert entry["runner"] == "benchmark_model"
    bench = entry["bench"]
    assert bench["runs"] == 7 and bench["warmup_runs"] == 1
    assert bench["graph"] == f"{workdir}/bundles/tiny-classifier/model.tflite"
    assert bench["latency_ms"]["mean"] > 0 and bench["init_ms"] > 0
    assert_one_peak_rss(entry)  # the model's share from the tool's "memory footprint delta" line
    [cached] = (workdir / "bin").glob("benchmark_model-*")
    assert os.access(cached, os.X_OK)
    stamp = cached.stat().st_mtime_ns
    [again] = bench_targets(tiny_bundle, ["ssh:board"], settings)["results"]
    assert again["ok"] and cached.stat().st_mtime_ns == stamp


def test_benchmark_model_flags_pass_through_and_op_profiling_reaches_the_report(ssh_env, tiny_bundle, tmp_path):
    binary = tmp_path / "benchmark_model"
    binary.write_text(python_fake(sys.executable))
    binary.chmod(0o755)
    settings = _settings(benchmark_binary=str(binary), workdir=str(tmp_path / "wd"), op_profiling=True,
                         benchmark_args=("--use_caching=true", "--max_secs=100"))
    doc = bench_targets(tiny_bundle, ["ssh:board"], settings)
    [entry] = doc["results"]
    assert entry["ok"], entry["error"]
    command = entry["run"]["command"]
    for flag in ("--report_peak_memory_footprint=true", "--enable_op_profiling=true", "--use_caching=true",
                 "--max_secs=100"):
        assert flag in command
    ops = entry["bench"]["top_ops"]
    assert ops and {o["op"] for o in ops} <= {"FULLY_CONNECTED", "ADD", "SOFTMAX", "DELEGATE"}
    assert sum(o["percent"] for o in ops) == pytest.approx(100, abs=0.1)
    assert "top ops per run: " in markdown_report(doc) and ops[0]["op"] in markdown_report(doc)


@pytest.mark.parametrize("arg, message", [
    ("--use_gpu_please=true", "benchmark_model has no flag --use_gpu_please"),
    ("--use_caching=yes", "--use_caching takes a bool"),
    ("--num_runs=ten", "--num_runs takes a int"),
    ("use_caching=true", "write --name=value"),
])
def test_a_flag_the_real_binary_would_not_take_is_refused_up_front(tmp_path, arg, message):
    binary = tmp_path / "benchmark_model"
    binary.write_text("")
    with pytest.raises(DeviceError, match=re.escape(message)):
        _settings(benchmark_binary=str(binary), benchmark_args=(arg,))
    with pytest.raises(DeviceError, match="apply to benchmark_model"):
        _settings(benchmark_args=("--use_caching=true",))


def test_a_binary_that_ignores_a_flag_fails_the_run(ssh_env, tiny_bundle, tmp_path):
    """An older benchmark_model without a flag liteship passes WARNs and runs without it: not a valid result."""
    binary = tmp_path / "benchmark_model"
    binary.write_text(python_fake(sys.executable).replace("'enable_op_profiling': 'bool', ", ""))
    binary.chmod(0o755)
    settings = _settings(benchmark_binary=str(binary), workdir=str(tmp_path / "wd"), op_profiling=True)
    [entry] = bench_targets(tiny_bundle, ["ssh:board"], settings)["results"]
    assert not entry["ok"]
    assert "does not know --enable_op_profiling=true and ran without it" in entry["error"]


def test_benchmark_model_failure_is_reported(ssh_env, tiny_bundle, tmp_path):
    binary = tmp_path / "benchmark_model"
    binary.write_text("#!/bin/sh\necho 'ERROR: Failed to allocate tensors!' >&2\nexit 1\n")
    binary.chmod(0o755)
    settings = _settings(benchmark_binary=str(binary), workdir=str(tmp_path / "wd"))
    [entry] = bench_targets(tiny_bundle, ["ssh:board"], settings)["results"]
    assert not entry["ok"]
    assert entry["error"] == "ssh:board: the benchmark_model benchmark failed: ERROR: Failed to allocate tensors!"
    assert entry["run"]["status"] == 1


def test_hostile_bundle_path_over_ssh(ssh_env, tiny_bundle, remote_python, tmp_path):
    odd = tmp_path / "my models" / "$(touch pwned); `touch pwned2`"
    odd.parent.mkdir()
    shutil.copytree(tiny_bundle, odd)
    workdir = tmp_path / "w d"
    [entry] = bench_targets(odd, ["ssh:board"], _settings(python=remote_python, workdir=str(workdir)))["results"]
    assert entry["ok"], entry["error"]
    assert entry["bench"]["model"]["path"] == f"{workdir}/bundles/{odd.name}/model.tflite"
    for where in (Path.home(), Path.cwd(), workdir, workdir / "bundles", workdir / "results"):
        assert not (where / "pwned").exists() and not (where / "pwned2").exists()


def test_bench_cli_writes_json_and_report(tiny_bundle, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from liteship.device.cli import bench

    monkeypatch.setenv("LITESHIP_LOCAL_WORKDIR", str(tmp_path / "wd"))
    out, report = tmp_path / "out" / "bench.json", tmp_path / "out" / "bench.md"
    result = CliRunner().invoke(bench, [str(tiny_bundle), "--runs", "3", "--warmup", "0",
                                        "--json", str(out), "--report", str(report)])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["schema"] == SCHEMA and doc["results"][0]["target"] == "local"
    assert doc["results"][0]["bench"]["runs"] == 3
    assert report.read_text().startswith("# liteship device benchmark: tiny-classifier")
    assert sorted(p.name for p in out.parent.iterdir()) == ["bench.json", "bench.md"]


def test_cores_and_cool_below_with_nothing_to_read_say_so(tiny_bundle, tmp_path, monkeypatch):
    """Regression: --cores big and --cool-below on a device without cpufreq or thermal zones ran unpinned and at
    once without a word; now each is one warning line while it runs, in the JSON and in the report."""
    from click.testing import CliRunner

    from liteship.device.cli import bench

    monkeypatch.setenv("LITESHIP_LOCAL_WORKDIR", str(tmp_path / "wd"))
    monkeypatch.setenv("LITESHIP_SYSFS", str(tmp_path / "empty-sys"))  # a device whose sysfs has neither
    out, report = tmp_path / "bench.json", tmp_path / "bench.md"
    result = CliRunner().invoke(bench, [str(tiny_bundle), "--runs", "2", "--warmup", "0", "--cores", "big",
                                        "--cool-below", "45", "--json", str(out), "--report", str(report)])
    assert result.exit_code == 0, result.output
    [entry] = json.loads(out.read_text())["results"]
    sysfs = tmp_path / "empty-sys"
    assert entry["warnings"] == [f"--cores: no cpu_capacity or cpufreq in {sysfs}/devices/system/cpu; not pinned",
                                 f"--cool-below: no thermal zone to read in {sysfs}/class/thermal; did not wait"]
    warned = [line for line in result.stderr.splitlines() if "warning" in line]
    assert warned == [f"local: warning: {w}" for w in entry["warnings"]]
    assert f"- local: warning: {entry['warnings'][1]}" in report.read_text()


def test_bench_cli_exits_1_when_a_device_fails_but_writes_results(tiny_bundle, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from liteship.device.cli import bench

    monkeypatch.setenv("LITESHIP_LOCAL_WORKDIR", str(tmp_path / "wd"))
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(bench, [str(tiny_bundle), "-d", "local", "-d", "usb:nothing", "--runs", "2",
                                        "--json", str(out)])
    assert isinstance(result.exception, DeviceError)
    assert str(result.exception) == f"1 of 2 devices failed: usb:nothing (details in {out})"
    doc = json.loads(out.read_text())
    assert [e["ok"] for e in doc["results"]] == [True, False]
    assert "unknown device 'usb:nothing'" in doc["results"][1]["error"]


@pytest.mark.device
def test_real_device(tiny_bundle, tmp_path):
    """Probe, push and bench against the device in LITESHIP_TEST_DEVICE (e.g. ssh:pi@raspberrypi.local, adb)."""
    spec = os.environ["LITESHIP_TEST_DEVICE"]
    settings = _settings(benchmark_binary=os.environ.get("LITESHIP_TEST_BENCHMARK_BINARY") or None)
    [entry] = bench_targets(tiny_bundle, [spec], settings)["results"]
    assert entry["device"]["abi"], entry
    assert entry["ok"], entry["error"]
    assert entry["bench"]["latency_ms"]["mean"] > 0


def test_runtime_zipapp_holds_only_the_runtime_and_is_reproducible(tmp_path):
    import subprocess
    import zipfile

    from liteship import __version__
    from liteship.device.runtime_pack import build_runtime_zip, write_runtime_zip

    path, digest = write_runtime_zip(tmp_path)
    assert path.name == f"liteship-runtime-{digest[:12]}.pyz"
    assert build_runtime_zip() == path.read_bytes()  # same sources -> same bytes -> same cache name
    names = zipfile.ZipFile(path).namelist()
    assert {"__main__.py", "liteship/__init__.py", "liteship/errors.py", "liteship/runtime/bench.py"} <= set(names)
    top = ("__main__.py", "liteship/__init__.py", "liteship/errors.py", "liteship/units.py")
    assert all(n in top or n.startswith("liteship/runtime/") for n in names)
    assert "liteship/runtime/tflite_file.py" in names and not [n for n in names if "gen_schema" in n]  # no dev tools
    out = subprocess.run([sys.executable, str(path), "version"], capture_output=True, text=True, cwd=tmp_path)
    assert out.stdout.strip() == __version__
    bad = subprocess.run([sys.executable, str(path), "convert"], capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode == 2 and "usage:" in bad.stderr


@pytest.mark.slow
def test_gpt2_bundle_reports_generation_speed_over_ssh(ssh_env, remote_python, tmp_path_factory, tmp_path):
    from tests.gpt2_fixtures import gpt2_bundles

    bundle = gpt2_bundles(tmp_path_factory) / "gpt2-fp32"
    settings = _settings(python=remote_python, workdir=str(tmp_path / "wd"), runs=3, threads=1)
    doc = bench_targets(bundle, ["ssh:board"], settings)
    [entry] = doc["results"]
    assert entry["ok"], entry["error"]
    generation = entry["bench"]["generation"]
    assert generation["decode_tokens"] > 0 and generation["decode_tok_s"] > 0
    assert generation["prefill_tok_s"] > 0
    assert f"decode {generation['decode_tok_s']:.1f} tok/s" in markdown_report(doc)
    assert f"KV cache: {generation['kv_cache']}" in markdown_report(doc)  # the board says which cache mode ran


def test_backend_and_delegate_reach_the_runner(tiny_bundle, tmp_path):
    # local target, python runner: --backend is passed to liteship.runtime.bench, which names it in its result
    settings = _settings(backend="litert", workdir=str(tmp_path))
    [entry] = bench_targets(tiny_bundle, ["local"], settings)["results"]
    assert entry["ok"], entry["error"]
    assert "--backend litert" in entry["run"]["command"]
    assert entry["bench"]["runtime"]["backend"].startswith("litert")
    with pytest.raises(DeviceError, match="not 'coral'"):
        _settings(benchmark_binary=sys.executable, delegate="coral")
    with pytest.raises(DeviceError, match="does not apply to benchmark_model"):
        _settings(benchmark_binary=sys.executable, backend="litert")


def test_bench_cli_json_to_stdout(tiny_bundle, tmp_path):
    from click.testing import CliRunner

    from liteship.device.cli import bench

    result = CliRunner().invoke(bench, [str(tiny_bundle), "--runs", "2", "--json", "-",  # click>=8.2 splits stderr
                                        "--workdir", str(tmp_path)])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["results"][0]["bench"]["runs"] == 2
    assert "| local |" in result.stderr


def test_benchmark_model_runner_on_the_local_target(tiny_bundle, tmp_path):
    binary = tmp_path / "benchmark_model"
    binary.write_text(python_fake(sys.executable))
    binary.chmod(0o755)
    settings = _settings(benchmark_binary=str(binary), workdir=str(tmp_path / "wd"), runs=4)
    [entry] = bench_targets(tiny_bundle, ["local"], settings)["results"]
    assert entry["ok"], entry["error"]
    assert entry["bench"]["runs"] == 4
    assert entry["bench"]["graph"] == str(tiny_bundle / "model.tflite")  # used where it is, not copied
    assert entry["push"] is None


def test_long_runs_come_back_whole(tiny_bundle, tmp_path):
    """Regression: results were read with `tail -c 256 KiB`, which cut the JSON of a run with many samples."""
    [entry] = bench_targets(tiny_bundle, ["local"], _settings(runs=30000, warmup=0, workdir=str(tmp_path)))["results"]
    assert entry["ok"], entry["error"]
    assert len(entry["bench"]["latency_ms"]["samples"]) == 30000


def make_two_signature_bundle(out_dir: Path, work: Path) -> Path:
    """A bundle whose model has two signatures, "encode" and "decode", as a GPT-2 bundle has prefill and decode."""
    import numpy as np
    import tensorflow as tf

    from liteship.convert.bundle import write_bundle

    class Two(tf.Module):
        def __init__(self):
            self.w = tf.Variable(np.random.default_rng(1).normal(size=(4, 4)).astype(np.float32))

        @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32, name="x")])
        def encode(self, x):
            return {"y": tf.matmul(x, self.w)}

        @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32, name="x")])
        def decode(self, x):
            return {"y": tf.nn.relu(tf.matmul(x, self.w) + 1.0)}

    two = Two()
    tf.saved_model.save(two, str(work), signatures={"encode": two.encode, "decode": two.decode})
    converter = tf.lite.TFLiteConverter.from_saved_model(str(work), signature_keys=["encode", "decode"])
    return write_bundle(out_dir, converter.convert(), family="classifier", task="classification",
                        quantization="fp32")


def test_benchmark_model_is_told_which_signature_of_several(ssh_env, tmp_path):
    """Regression: with two signatures and no --signature_to_run_for benchmark_model refuses to run; liteship now
    names the one its Python runner would time (decode), or the one asked for."""
    bundle = make_two_signature_bundle(tmp_path / "two-signatures", tmp_path / "saved")
    binary = tmp_path / "benchmark_model"
    binary.write_text(python_fake(sys.executable))
    binary.chmod(0o755)
    settings = _settings(benchmark_binary=str(binary), workdir=str(tmp_path / "wd"))
    [entry] = bench_targets(bundle, ["ssh:board"], settings)["results"]
    assert entry["ok"], entry["error"]
    assert entry["bench"]["signature"] == "decode"
    [entry] = bench_targets(bundle, ["ssh:board"], _settings(benchmark_binary=str(binary), signature="encode",
                                                             workdir=str(tmp_path / "wd")))["results"]
    assert entry["ok"] and entry["bench"]["signature"] == "encode"


@pytest.mark.slow  # builds the tiny GPT-2 bundles (torch reference + conversion) when no other test did
def test_benchmark_model_times_gpt2_prefill_and_decode_at_stated_contexts(tmp_path_factory, tmp_path):
    """A GPT-2 bundle under benchmark_model: one run for prefill and one per decode context, each with every input
    of its subgraph spelled out (the open cache dimension filled in, a valid position), turned into tok/s."""
    from tests.gpt2_fixtures import BUNDLE_OPTIONS, gpt2_bundles

    bundle = gpt2_bundles(tmp_path_factory) / "gpt2-fp32"
    binary = tmp_path / "benchmark_model"
    binary.write_text(python_fake(sys.executable))
    binary.chmod(0o755)
    settings = _settings(benchmark_binary=str(binary), workdir=str(tmp_path / "wd"), contexts=(16, 48, 4096))
    doc = bench_targets(bundle, ["local"], settings)
    [entry] = doc["results"]
    assert entry["ok"], entry["error"]
    gen = entry["bench"]["generation"]
    C, P = BUNDLE_OPTIONS["max_context"], BUNDLE_OPTIONS["prefill_len"]
    assert [d["context"] for d in gen["decode_by_context"]] == [16, 48]  # 4096 is past the bundle's context
    assert gen["prefill_tokens"] == P and gen["prefill_tok_s"] > 0 and gen["decode_tok_s"] > 0
    assert gen["context"] == 48 and entry["bench"]["signature"] == "decode"
    for d in gen["decode_by_context"]:
        assert d["tok_s"] == pytest.approx(1e3 / d["latency_ms"]["mean"], rel=1e-3)
    command = entry["run"]["command"]  # the last run: decode at 48 slots
    assert "--signature_to_run_for=decode" in command and "--input_layer_value_range=position,48,48" in command
    shapes = dict(zip(re.search(r"--input_layer=(\S+)", command)[1].split(","),
                      re.search(r"--input_layer_shape=(\S+)", command)[1].split(":")))
    assert shapes["mask"] == "1,49" and shapes["k_0"].split(",")[1] == "48" and shapes["position"] == "1"
    assert f"prefill {gen['prefill_tok_s']:.1f} tok/s over {P} tokens" in markdown_report(doc)
    assert C > 48
    assert_one_peak_rss(entry)  # each phase is a process: the run's peak is the largest phase's


def test_benchmark_model_prefill_fills_the_open_cache_like_the_runtime(tmp_path_factory):
    """Bundles whose prefill leaves its cache slots, logits rows and chunk length open: benchmark_model (which
    refuses a -1) gets a first chunk's one masked slot, a chunk of P tokens with its [P, P] mask and one row of
    logits, the last position."""
    from liteship.device.benchmark_model import gpt2_phases
    from liteship.runtime.bundle import Bundle
    from tests.gpt2_fixtures import BUNDLE_OPTIONS, gpt2_bundles

    b = Bundle.open(gpt2_bundles(tmp_path_factory) / "gpt2-fp32")
    prefill = gpt2_phases(b.model_path, b.config, (16,))[0]
    P = BUNDLE_OPTIONS["prefill_len"]
    flags = dict(f[2:].split("=", 1) for f in prefill.input_flags)
    shapes = dict(zip(flags["input_layer"].split(","), flags["input_layer_shape"].split(":")))
    assert (prefill.signature, prefill.tokens, prefill.context) == ("prefill", P, 1)
    assert shapes["k_0"].split(",")[1] == "1" and shapes["cache_mask"] == "1,1" and shapes["rows"] == "1"
    assert shapes["chunk_mask"] == f"{P},{P}" and shapes["embeds"] == f"{P},32" and shapes["positions"] == f"{P}"
    assert f"rows,{P - 1},{P - 1}" in flags["input_layer_value_range"].split(":")
    assert f"positions,0,{P - 1}" in flags["input_layer_value_range"].split(":")
