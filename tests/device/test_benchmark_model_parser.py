"""parse_benchmark_model_output against logs in benchmark_model's real format.

The samples are written line for line from the log statements in TensorFlow's sources -
tensorflow/lite/tools/benchmark/benchmark_model.cc (``Initialized session in``, ``Running benchmark for at least``,
``Inference timings in us: Init: ..., First inference: ..., Warmup (avg): ..., Inference (avg): ...``,
``Memory footprint delta from the start of the tool (MB): init=... overall=...``, ``Overall peak memory footprint
(MB) via periodic monitoring: ...``, ``- VmRSS : N MB``), benchmark_tflite_model.cc (``Graph: [...]``, ``Signature to
run: [...]``, the multi-signature ERROR with ``#> Signature key:`` lines) and stats_calculator.h
``Stat::OutputToStream`` (``count= first= curr= min= max= avg= std=``, ``count=N curr=X(all same)``) - with ``INFO: ``
prefixes as TFLITE_LOG prints them. The older form (``Average inference timings in us: Warmup: ..., Init: ...,
Inference: ...`` and ``Peak memory footprint (MB): init=... overall=...``) is from the TF 2.0-2.2 releases of the same
file. Numbers are from a MobileNet-sized run; what matters is the layout.
"""

from __future__ import annotations

import pytest

from liteship.device.benchmark_model import MIB, benchmark_model_argv, parse_benchmark_model_output

MODERN = """\
INFO: STARTING!
INFO: Log parameter values verbosely: [0]
INFO: Num threads: [4]
INFO: Graph: [/data/local/tmp/liteship/bundles/mobilenet/model.tflite]
INFO: Signature to run: []
INFO: Report the peak memory footprint: [1]
INFO: #threads used for CPU inference: [4]
INFO: Loaded model /data/local/tmp/liteship/bundles/mobilenet/model.tflite
INFO: Initialized TensorFlow Lite runtime.
INFO: Created TensorFlow Lite XNNPACK delegate for CPU.
INFO: The input model file size (MB): 4.27635
INFO: Initialized session in 3.63ms.
INFO: Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
INFO: count=28 first=27432 curr=17163 min=16888 max=27432 avg=18080.4 std=1936

INFO: Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
INFO: count=58 first=17178 curr=17147 min=16880 max=18118 avg=17223.6 std=172

INFO: Inference timings in us: Init: 3630, First inference: 27432, Warmup (avg): 18080.4, Inference (avg): 17223.6
INFO: Note: as the benchmark tool itself affects memory footprint, the following is only APPROXIMATE to the actual memory footprint of the model at runtime. Take the information at your discretion.
INFO: Memory footprint delta from the start of the tool (MB): init=6.23828 overall=9.67578
INFO: Overall peak memory footprint (MB) via periodic monitoring: 12.3047
INFO: Memory status at the end of exeution:
INFO: - VmRSS              : 30 MB
INFO: + RssAnnon           : 20 MB
INFO: + RssFile + RssShmem : 10 MB
"""

# A large model on a slow core: ostream prints big doubles in scientific notation; no memory lines at all
# (the platform had no memory info, so OnBenchmarkEnd returned after the timings line).
SCIENTIFIC_NO_MEMORY = """\
INFO: Graph: [/data/local/tmp/gpt2.tflite]
INFO: Signature to run: [decode]
INFO: Initialized session in 1.2345e+03ms.
INFO: Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
INFO: count=1 curr=2512345

INFO: Running benchmark for at least 5 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
INFO: count=5 first=1200345 curr=1198765 min=1190000 max=1250000 avg=1.21068e+06 std=21344.5

INFO: Inference timings in us: Init: 1.2345e+06, First inference: 2.51234e+06, Warmup (avg): 2.51234e+06, Inference (avg): 1.21068e+06
"""

ALL_SAME = """\
INFO: Initialized session in 0.5ms.
INFO: count=3 curr=120(all same)
INFO: count=10 curr=100(all same)
INFO: Inference timings in us: Init: 500, First inference: 120, Warmup (avg): 120, Inference (avg): 100
"""

OLD_RELEASE = """\
STARTING!
Min num runs: [50]
Num threads: [1]
Graph: [/data/local/tmp/mobilenet_quant_v1_224.tflite]
Loaded model /data/local/tmp/mobilenet_quant_v1_224.tflite
The input model file size (MB): 4.27635
Initialized session in 5.432ms.
Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
count=7 first=88521 curr=76554 min=76554 max=88521 avg=79452.9 std=3910

Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
count=50 first=77001 curr=76900 min=76105 max=79210 avg=77120.5 std=612

Average inference timings in us: Warmup: 79452.9, Init: 5432, Inference: 77120.5
Peak memory footprint (MB): init=3.12 overall=11.5
"""

MULTI_SIGNATURE_ERROR = """\
INFO: STARTING!
INFO: Graph: [/data/local/tmp/liteship/bundles/gpt2/model.tflite]
INFO: Loaded model /data/local/tmp/liteship/bundles/gpt2/model.tflite
ERROR: Signature not specified or incorrect for graph with multiple signatures. Pass one of the following to the flag "--signature_to_run_for"
ERROR:  #> Signature key: decode
ERROR:  #> Signature key: prefill
ERROR: Benchmarking failed.
"""


def test_modern_log_gives_every_field():
    r = parse_benchmark_model_output(MODERN)
    assert r["init_ms"] == pytest.approx(3.63)
    assert r["first_inference_ms"] == pytest.approx(27.432)
    assert (r["warmup_runs"], r["runs"]) == (28, 58)
    assert r["warmup_avg_ms"] == pytest.approx(18.0804)
    lat = r["latency_ms"]
    # us -> ms is an exact division by 1000; approx only absorbs float rounding.
    assert lat["mean"] == pytest.approx(17.2236)
    assert lat["std"] == pytest.approx(0.172)
    assert (lat["min"], lat["max"]) == (pytest.approx(16.880), pytest.approx(18.118))
    assert lat["p50"] is None and lat["samples"] == []  # the tool prints no per-run times
    assert r["peak_rss_bytes"] == round(12.3047 * MIB)
    assert r["memory_mb"] == {"init_delta": 6.23828, "overall_delta": 9.67578, "peak": 12.3047, "rss_at_end": 30.0}
    assert r["model_size_bytes"] == 4276350
    assert r["threads"] == 4
    assert r["graph"].endswith("mobilenet/model.tflite")
    assert r["signature"] is None  # "Signature to run: []" - the model's only signature
    assert r["errors"] == []


def test_scientific_notation_and_missing_memory_lines():
    r = parse_benchmark_model_output(SCIENTIFIC_NO_MEMORY)
    assert r["init_ms"] == pytest.approx(1234.5)
    assert r["first_inference_ms"] == pytest.approx(2512.34)
    assert r["latency_ms"]["mean"] == pytest.approx(1210.68)
    assert r["latency_ms"]["std"] == pytest.approx(21.3445)
    assert (r["warmup_runs"], r["runs"]) == (1, 5)
    assert r["signature"] == "decode"
    assert r["peak_rss_bytes"] is None
    assert r["memory_mb"] == {"init_delta": None, "overall_delta": None, "peak": None, "rss_at_end": None}
    assert r["model_size_bytes"] is None


def test_all_same_stat_lines():
    r = parse_benchmark_model_output(ALL_SAME)
    lat = r["latency_ms"]
    assert (lat["mean"], lat["min"], lat["max"], lat["std"]) == (0.1, 0.1, 0.1, 0.0)
    assert (r["warmup_runs"], r["runs"]) == (3, 10)
    assert r["first_inference_ms"] == pytest.approx(0.12)


def test_older_release_format():
    r = parse_benchmark_model_output(OLD_RELEASE)
    assert r["init_ms"] == pytest.approx(5.432)
    assert r["latency_ms"]["mean"] == pytest.approx(77.1205)
    assert r["warmup_avg_ms"] == pytest.approx(79.4529)
    assert r["first_inference_ms"] == pytest.approx(88.521)  # from the warm-up Stat's first=
    # old releases' "Peak memory footprint" is the delta from the tool's start, not the process's peak
    assert r["peak_rss_bytes"] is None
    assert (r["memory_mb"]["init_delta"], r["memory_mb"]["overall_delta"]) == (3.12, 11.5)
    assert r["threads"] == 1


def test_multi_signature_model_without_the_flag_reports_the_choices():
    r = parse_benchmark_model_output(MULTI_SIGNATURE_ERROR)
    assert r["signatures_available"] == ["decode", "prefill"]
    assert any("--signature_to_run_for" in e for e in r["errors"])
    assert r["latency_ms"]["mean"] is None and r["init_ms"] is None and r["runs"] is None


def test_litert_prefixes_and_windows_line_endings():
    text = MODERN.replace("INFO: ", "INFO: [benchmark_model.cc:123] ").replace("\n", "\r\n")
    r = parse_benchmark_model_output(text)
    assert r["latency_ms"]["mean"] == pytest.approx(17.2236)
    assert r["peak_rss_bytes"] == round(12.3047 * MIB)



def test_command_line_asks_for_exact_counts_and_the_signature():
    argv = benchmark_model_argv("/data/local/tmp/liteship/bin/benchmark_model", "/x/model.tflite", runs=20, warmup=2,
                                threads=4, signature="decode")
    assert argv[0].endswith("benchmark_model")
    for flag in ("--graph=/x/model.tflite", "--num_runs=20", "--warmup_runs=2", "--min_secs=0", "--warmup_min_secs=0",
                 "--num_threads=4", "--signature_to_run_for=decode", "--report_peak_memory_footprint=true"):
        assert flag in argv


def test_a_delegate_is_asked_for_by_the_flag_the_tool_takes():
    from liteship.device.benchmark_model import DELEGATE_FLAGS

    for name, flag in DELEGATE_FLAGS.items():
        argv = benchmark_model_argv("bm", "/x/model.tflite", delegate=name)
        assert [a for a in argv if a.startswith("--use_")] == [flag]
    assert not [a for a in benchmark_model_argv("bm", "/x/model.tflite") if a.startswith("--use_")]


PROFILED = MODERN.replace("INFO: Inference timings in us:", """\
WARN: Unconsumed cmdline flags: --use_caching_please=true
INFO: Operator-wise Profiling Info for Regular Benchmark Runs:
============================== Run Order ==============================
\t             [node type]\t  [first]\t  [avg ms]\t      [%]\t    [cdf%]\t  [mem KB]\t[times called]\t[Name]
\t         FULLY_CONNECTED\t    0.100\t     0.120\t  60.000%\t  60.000%\t     0.000\t        1\t[fc]

============================== Summary by node type ==============================
\t             [Node type]\t  [count]\t  [avg ms]\t    [avg %]\t    [cdf %]\t  [mem KB]\t[times called]
\t         FULLY_CONNECTED\t       48\t     5.423\t    60.123%\t    60.123%\t     0.000\t       48
\t                 SOFTMAX\t       12\t     2.100\t    23.281%\t    83.404%\t     0.000\t       12
\t                     ADD\t       24\t     1.497\t    16.596%\t   100.000%\t     0.000\t       24

Timings (microseconds): count=58 first=17178 curr=17147 min=16880 max=18118 avg=17223.6 std=172
Memory (bytes): count=0
3 nodes observed

INFO: Inference timings in us:""")


def test_op_profiling_and_ignored_flags_are_read():
    r = parse_benchmark_model_output(PROFILED)
    assert [o["op"] for o in r["top_ops"]] == ["FULLY_CONNECTED", "SOFTMAX", "ADD"]
    assert r["top_ops"][0] == {"op": "FULLY_CONNECTED", "count": 48, "avg_ms": 5.423, "percent": 60.123}
    assert r["ignored_flags"] == ["--use_caching_please=true"]
    assert r["runs"] == 58 and r["latency_ms"]["mean"] == pytest.approx(17.2236)  # the profile's Timings line aside
    assert parse_benchmark_model_output(MODERN)["top_ops"] == []


def test_liteship_flag_table_matches_the_one_read_from_the_sources():
    """liteship's flag list (device/benchmark_model.py) against the tests' own reading of the same sources."""
    from liteship.device.benchmark_model import BENCHMARK_MODEL_FLAGS
    from tests.device.fake_benchmark_model import REAL_FLAGS

    kinds = {bool: "bool", int: "int32", float: "float", str: "string"}
    assert {name: kinds[kind] for name, kind in BENCHMARK_MODEL_FLAGS.items()} == REAL_FLAGS


def test_extra_flags_go_last_and_unknown_ones_are_refused():
    from liteship.errors import DeviceError

    argv = benchmark_model_argv("bm", "/x/model.tflite", op_profiling=True, extra=("--num_threads=2",))
    assert argv[-2:] == ["--enable_op_profiling=true", "--num_threads=2"]
    with pytest.raises(DeviceError, match="has no flag --warmup_seconds"):
        benchmark_model_argv("bm", "/x/model.tflite", extra=("--warmup_seconds=1",))
