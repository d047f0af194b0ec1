"""Stand-ins for TFLite's / LiteRT's official benchmark_model (no binary for this host is in the repo).

Both parse the command line the way the real tool does, from its own flag list as read in TensorFlow's sources
(BenchmarkModel::GetFlags in tensorflow/lite/tools/benchmark/benchmark_model.cc, BenchmarkTfLiteModel::GetFlags in
benchmark_tflite_model.cc, the delegate providers' CreateFlags in tensorflow/lite/tools/delegates/), written down
here independently of liteship's copy so a test fails when liteship passes a flag the real binary would not take:

* ``--name=value`` of a known flag whose value does not parse as its type: the usage text as an ERROR, exit 1
  (Flags::Parse fails);
* an unknown flag: ``WARN: Unconsumed cmdline flags: ...`` and the run goes on without it (BenchmarkModel::ParseFlags);
* a model with several signatures and no (or a wrong) ``--signature_to_run_for``: the keys as ERRORs, exit 1
  (BenchmarkInterpreterRunner::Create);
* ``--input_layer`` / ``--input_layer_shape`` / ``--input_layer_value_range``: checked as PopulateInputLayerInfo
  and Init check them (counts, no -1, every subgraph input listed, ranks), matched to the subgraph's inputs by
  position (a differing name only WARNs), integers drawn from their range, floats random;
* ``--enable_op_profiling=true``: an "Operator-wise Profiling Info for Regular Benchmark Runs" block with a
  "Summary by node type" table (profile_summarizer's default formatter);
* the python fake ends with the "Memory footprint delta from the start of the tool (MB)" line, its own max RSS
  growth since it started, as benchmark_model.cc measures it.

``python_fake(python)`` really runs the model with LiteRT (for the host and the SSH board); ``MKSH_FAKE`` runs where
the real one runs on a phone, under mksh with busybox and no python, timing a sha256 of the graph per run.
"""

from __future__ import annotations

BOOL, INT, FLOAT, STRING = "bool", "int32", "float", "string"

REAL_FLAGS = {
    # benchmark_model.cc
    "num_runs": INT, "min_secs": FLOAT, "max_secs": FLOAT, "run_delay": FLOAT, "run_frequency": FLOAT,
    "num_threads": INT, "use_caching": BOOL, "benchmark_name": STRING, "output_prefix": STRING, "warmup_runs": INT,
    "warmup_min_secs": FLOAT, "verbose": BOOL, "dry_run": BOOL, "report_peak_memory_footprint": BOOL,
    "memory_footprint_check_interval_ms": INT,
    # benchmark_tflite_model.cc
    "graph": STRING, "input_layer": STRING, "input_layer_shape": STRING, "input_layer_value_range": STRING,
    "input_layer_value_files": STRING, "allow_fp16": BOOL, "require_full_delegation": BOOL,
    "enable_op_profiling": BOOL, "op_profiling_output_mode": STRING, "op_profiling_output_file": STRING,
    "max_profiling_buffer_entries": INT, "allow_dynamic_profiling_buffer_increase": BOOL,
    "profiling_output_csv_file": STRING, "print_preinvoke_state": BOOL, "print_postinvoke_state": BOOL,
    "release_dynamic_tensors": BOOL, "optimize_memory_for_large_tensors": INT, "disable_delegate_clustering": BOOL,
    "enable_builtin_cast_constant_cache": BOOL, "output_filepath": STRING, "tensor_name_display_length": INT,
    "tensor_type_display_length": INT, "alloc_type_display_length": INT, "signature_to_run_for": STRING,
    "list_signatures": BOOL,
    # tools/delegates: default_execution_provider.cc, then the xnnpack, gpu, nnapi, hexagon, external providers
    "help": BOOL, "max_delegated_partitions": INT, "min_nodes_per_partition": INT, "delegate_serialize_dir": STRING,
    "delegate_serialize_token": STRING, "first_delegate_node_index": INT, "last_delegate_node_index": INT,
    "use_xnnpack": BOOL, "xnnpack_force_fp16": BOOL, "use_gpu": BOOL, "gpu_precision_loss_allowed": BOOL,
    "gpu_experimental_enable_quant": BOOL, "gpu_backend": STRING, "use_nnapi": BOOL,
    "nnapi_accelerator_name": STRING, "nnapi_execution_preference": STRING, "disable_nnapi_cpu": BOOL,
    "nnapi_allow_fp16": BOOL, "use_hexagon": BOOL, "hexagon_profiling": BOOL, "external_delegate_path": STRING,
    "external_delegate_options": STRING,
}

_PYTHON_FAKE = r'''#!{python}
import re, sys, time
import numpy as np
from ai_edge_litert.interpreter import Interpreter
KINDS = {kinds!r}
CHECK = {{"bool": r"true|false|1|0", "int32": r"[-+]?\d+", "float": r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?",
          "string": r"(?s).*"}}
flags, unconsumed = {{}}, []
for arg in sys.argv[1:]:
    m = re.fullmatch(r"--([a-z0-9_]+)=(.*)", arg, flags=re.S)
    if not m or m.group(1) not in KINDS:
        unconsumed.append(arg)
        continue
    if not re.fullmatch(CHECK[KINDS[m.group(1)]], m.group(2)):
        print("ERROR: usage: benchmark_model\nFlags:\n  --%s=%s" % (m.group(1), KINDS[m.group(1)]))
        sys.exit(1)
    flags[m.group(1)] = m.group(2)
print("INFO: STARTING!")
if unconsumed:
    print("WARN: Unconsumed cmdline flags: " + " ".join(unconsumed))
print("INFO: Graph: [%s]" % flags.get("graph", ""))
print("INFO: Signature to run: [%s]" % flags.get("signature_to_run_for", ""))
print("INFO: Num threads: [%s]" % flags.get("num_threads", "-1"))
import resource
start_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # BenchmarkModel::Run's start_mem_usage
t0 = time.perf_counter()
interp = Interpreter(model_path=flags["graph"], num_threads=int(flags.get("num_threads", 1)))
keys = list(interp.get_signature_list())
sig = flags.get("signature_to_run_for", "")
if len(keys) > 1 and sig not in keys:  # BenchmarkInterpreterRunner::Create
    print('ERROR: Signature not specified or incorrect for graph with multiple signatures. Pass one of the '
          'following to the flag "--signature_to_run_for"')
    for k in keys:
        print("ERROR:  #> Signature key: " + k)
    sys.exit(1)
runner = interp.get_signature_runner(sig or None)
details = runner.get_input_details()
inputs = {{k: np.zeros(d["shape"], d["dtype"]) for k, d in details.items()}}
if flags.get("input_layer") or flags.get("input_layer_shape"):
    # PopulateInputLayerInfo, then Init: inputs are matched to the subgraph's inputs by position.
    names = [n for n in flags.get("input_layer", "").split(",") if n]
    shapes = [x for x in flags.get("input_layer_shape", "").split(":") if x]
    if len(names) != len(shapes):
        print("ERROR: The number of items in --input_layer_shape (%s, with %d items) must match the number of "
              "items in --input_layer (%s, with %d items)." % (flags.get("input_layer_shape"), len(shapes),
                                                               flags.get("input_layer"), len(names)))
        sys.exit(1)
    shapes = [[int(d) for d in x.split(",")] for x in shapes]
    if any(d == -1 for shape in shapes for d in shape):
        print("ERROR: Any unknown sizes in the shapes (-1's) must be replaced with the size you want to benchmark with.")
        sys.exit(1)
    ranges = {{}}
    for item in [x for x in flags.get("input_layer_value_range", "").split(":") if x]:
        parts = item.split(",")
        if len(parts) != 3:
            print("ERROR: Wrong input value range item specified: " + item)
            sys.exit(1)
        if parts[0] not in names:
            print("FATAL: Cannot find the corresponding input_layer name(%s) in --input_layer as %s" % (parts[0], flags["input_layer"]))
            sys.exit(134)
        ranges[parts[0]] = (int(parts[1]), int(parts[2]))
    # The subgraph's own input order, from the file (liteship's flatbuffer reader stands in for TFLite's).
    from liteship.runtime.tflite_file import read_model
    model = read_model(flags["graph"])
    sigdef = next(sd for sd in model.signatures if sd.key == (sig or model.signatures[0].key))
    by_index = {{index: key for key, index in sigdef.inputs.items()}}
    order = [by_index[i] for i in model.subgraphs[sigdef.subgraph].inputs]
    if len(names) != len(order):
        print("FATAL: Inputs mismatch: Model inputs #:%d expected: %d" % (len(names), len(order)))
        sys.exit(134)
    rng = np.random.default_rng(0)
    for name, key, shape in zip(names, order, shapes):
        tensor_name = model.subgraphs[sigdef.subgraph].tensors[sigdef.inputs[key]].name
        if name != tensor_name:
            print("WARN: Tensor # %d is named %s but flags call it %s" % (sigdef.inputs[key], tensor_name, name))
        if len(shape) != len(details[key]["shape"]):
            print("ERROR: Input tensor #%d should have %d dimensions!" % (sigdef.inputs[key], len(details[key]["shape"])))
            sys.exit(1)
        dtype = details[key]["dtype"]
        if np.issubdtype(dtype, np.integer):
            low, high = ranges.get(name, (0, 99))
            inputs[key] = rng.integers(low, high + 1, size=shape).astype(dtype)
        else:
            inputs[key] = rng.uniform(-0.5, 0.5, size=shape).astype(dtype)
    print("INFO: Input shapes: [%s]" % flags["input_layer_shape"])
init_us = (time.perf_counter() - t0) * 1e6
print("INFO: Initialized session in %.3fms." % (init_us / 1e3))
def times(n):
    out = []
    for _ in range(n):
        t = time.perf_counter(); runner(**inputs); out.append((time.perf_counter() - t) * 1e6)
    return out
def stat(v):
    a = np.array(v)
    return "count=%d first=%d curr=%d min=%d max=%d avg=%g std=%d" % (len(a), a[0], a[-1], a.min(), a.max(), a.mean(), a.std())
w = times(max(1, int(flags.get("warmup_runs", 1))))
print("INFO: Running benchmark for at least %s iterations and at least 0 seconds" % flags.get("warmup_runs"))
print("INFO: " + stat(w))
r = times(int(flags["num_runs"]))
print("INFO: Running benchmark for at least %s iterations and at least 0 seconds" % flags["num_runs"])
print("INFO: " + stat(r))
if flags.get("enable_op_profiling") in ("true", "1"):
    # The run's mean time shared over the model's op types by their op counts: the table's layout is the point.
    from liteship.runtime.backend_private import ops_details
    ops = {{}}
    for op in ops_details(interp):
        ops[op["op_name"]] = ops.get(op["op_name"], 0) + 1
    total, mean_ms, cdf = sum(ops.values()), np.mean(r) / 1e3, 0.0
    print("INFO: Operator-wise Profiling Info for Regular Benchmark Runs:")
    print("============================== Summary by node type ==============================")
    print("\t             [Node type]\t  [count]\t  [avg ms]\t    [avg %%]\t    [cdf %%]\t  [mem KB]\t[times called]")
    for name, count in sorted(ops.items(), key=lambda kv: -kv[1]):
        pct = 100.0 * count / total
        cdf += pct
        print("\t%24s\t%9d\t%10.3f\t%10.3f%%\t%10.3f%%\t%10.3f\t%9d" % (name, count, mean_ms * count / total, pct, cdf, 0.0, count))
    print("")
    print("Timings (microseconds): count=%d first=%d curr=%d min=%d max=%d avg=%g std=%d" % (len(r), r[0], r[-1], min(r), max(r), np.mean(r), np.std(r)))
print("INFO: Inference timings in us: Init: %d, First inference: %d, Warmup (avg): %g, Inference (avg): %g"
      % (init_us, w[0], np.mean(w), np.mean(r)))
# benchmark_model.cc: max RSS now minus at the start, kB / 1024.0 (the init figure is taken the same way)
delta_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start_kb) / 1024.0
print("INFO: Memory footprint delta from the start of the tool (MB): init=%g overall=%g" % (delta_mb, delta_mb))
if flags.get("report_peak_memory_footprint", "false").lower() in ("1", "true"):
    # the real tool's periodic monitor reads the RSS; the fake's high-water mark is its closest honest stand-in
    print("INFO: Overall peak memory footprint (MB) via periodic monitoring: %g"
          % (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0))
'''


def python_fake(python: str) -> str:
    return _PYTHON_FAKE.format(python=python, kinds=REAL_FLAGS)


def _mksh_cases() -> str:
    patterns = {BOOL: "true|false|1|0", INT: "''|*[!0-9-]*", FLOAT: "", STRING: ""}
    lines = []
    for name, kind in REAL_FLAGS.items():
        if kind == BOOL:
            check = f'case $v in {patterns[BOOL]}) ;; *) bad "{name}" {kind} ;; esac'
        elif kind == INT:
            check = f'case $v in {patterns[INT]}) bad "{name}" {kind} ;; esac'
        else:
            check = ":"
        lines.append(f"        --{name}=*) {check}; eval \"f_{name}=\\$v\" ;;")
    return "\n".join(lines)


MKSH_FAKE = r"""#!/system/bin/sh
bad() { echo "ERROR: usage: benchmark_model"; echo "Flags:"; echo "  --$1=$2"; exit 1; }
f_graph= f_num_runs=50 f_warmup_runs=1 f_num_threads=-1 f_signature_to_run_for= f_enable_op_profiling=false
unconsumed=
for a; do
    v=${a#*=}
    case $a in
""" + _mksh_cases() + r"""
        *) unconsumed="$unconsumed $a" ;;
    esac
done
echo "INFO: STARTING!"
sleep 0.3  # a model's load time: run_bench.sh reads this process's VmHWM more than once, as on a real run
[ -z "$unconsumed" ] || echo "WARN: Unconsumed cmdline flags:$unconsumed"
[ "$(dd if="$f_graph" bs=1 skip=4 count=4 2>/dev/null)" = TFL3 ] || { echo "ERROR: Could not open '$f_graph'."; exit 1; }
now() { t=$EPOCHREALTIME; s=${t%.*}; u=${t#*.}; echo $(( (s % 1000) * 1000000 + 1$u - 1000000 )); }
# busybox awk has no sqrt: Newton's method for the standard deviation.
timed() {
    i=0
    while [ $i -lt $1 ]; do
        t0=$(now); sha256sum "$f_graph" >/dev/null; t1=$(now); echo $((t1 - t0)); i=$((i + 1))
    done | awk 'NR==1{f=$1; mn=$1; mx=$1} {s+=$1; q+=$1*$1; c=$1; if($1<mn)mn=$1; if($1>mx)mx=$1}
        END{a=s/NR; v=q/NR-a*a; d=v>0?v:1; for(k=0;k<60;k++) d=(d+v/d)/2; if(v<=0)d=0
            printf "count=%d first=%d curr=%d min=%d max=%d avg=%g std=%d\n", NR, f, c, mn, mx, a, d}'
}
field() { echo "$2" | tr ' ' '\n' | sed -n "s/^$1=//p"; }
echo "INFO: Num threads: [$f_num_threads]"
echo "INFO: Graph: [$f_graph]"
echo "INFO: Signature to run: [$f_signature_to_run_for]"
echo "INFO: Initialized session in 1.5ms."
echo "INFO: Running benchmark for at least $f_warmup_runs iterations and at least 0 seconds"
w=$(timed "$f_warmup_runs"); echo "INFO: $w"
echo "INFO: Running benchmark for at least $f_num_runs iterations and at least 0 seconds"
r=$(timed "$f_num_runs"); echo "INFO: $r"
case $f_enable_op_profiling in true|1)
    avg=$(field avg "$r")
    echo "INFO: Operator-wise Profiling Info for Regular Benchmark Runs:"
    echo "============================== Summary by node type =============================="
    printf '\t%24s\t%9s\t%10s\t%10s\t%10s\t%10s\t%s\n' '[Node type]' '[count]' '[avg ms]' '[avg %]' '[cdf %]' '[mem KB]' '[times called]'
    # the run's time as one op type, SHA256: the table's layout is the point
    awk -v a="$avg" 'BEGIN{printf "\t%24s\t%9d\t%10.3f\t%9.3f%%\t%9.3f%%\t%10.3f\t%9d\n", "SHA256", 1, a/1000, 100, 100, 0, 1}' ;;
esac
echo "INFO: Inference timings in us: Init: 1500, First inference: $(field first "$w"), Warmup (avg): $(field avg "$w"), Inference (avg): $(field avg "$r")"
"""
