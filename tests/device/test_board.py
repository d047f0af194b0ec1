"""liteship on a board over SSH, end to end, against the device in LITESHIP_TEST_DEVICE.

CI runs these against emulated aarch64 and armv7l boards (.ci/board-tests arm64|armhf): probe, push and bench over
SSH with the report naming the board's ABI; GPT-2 greedy tokens and BiT top-5 computed on the board equal to this
host's; and a runtime older than a model needs refused with one line before anything is pushed. Where the
board's runtime is older than today's converter writes for (LITESHIP_TEST_DEVICE_MIN_RUNTIME, 2.14 on armv7l: only
tflite-runtime 2.14 exists there), the quantized bundles are converted with --min-runtime for it. Bundles are built
here (TensorFlow is on the host only), pushed, and run there from liteship's runtime zipapp.
Timings on an emulated board are qemu's, not a device's: nothing here looks at one.
"""

from __future__ import annotations

import os

import pytest

from liteship.device.bench import BenchSettings, bench_targets
from liteship.device.report import markdown_report
from tests.device.board import GREEDY_TOKENS, SCORES, DeviceRuntime, assert_same_top5, device_spec, run_here

pytestmark = pytest.mark.device


@pytest.fixture(scope="module")
def device(tmp_path_factory):
    if not os.environ.get("LITESHIP_TEST_DEVICE"):  # module fixtures run before conftest's per-test skip
        pytest.skip("set LITESHIP_TEST_DEVICE=ssh:... to run against a board")
    if not device_spec().startswith("ssh:"):
        pytest.skip(f"{device_spec()} is not an SSH board")
    runtime = DeviceRuntime(device_spec(), tmp_path_factory.mktemp("runtime-pack"))
    yield runtime
    runtime.close()


def _settings(**kw) -> BenchSettings:
    return BenchSettings(**{"runs": 3, "warmup": 1, "timeout_s": 900, **kw})


def test_probe_push_bench_over_ssh_report_names_the_boards_abi(device, tiny_bundle, tmp_path):
    doc = bench_targets(tiny_bundle, [device_spec()], _settings(python=device.python, workdir=f"{device.workdir}/bench"))
    [entry] = doc["results"]
    assert entry["ok"], entry["error"]
    uname = device.target.run(["uname", "-m"]).stdout.strip()
    assert entry["device"]["abi"] == uname  # the probe reads the board, not this host
    assert entry["bench"]["host"]["machine"] == uname  # and the benchmark ran there
    expected = os.environ.get("LITESHIP_TEST_DEVICE_ABI")
    if expected:
        assert uname == expected
    assert entry["push"]["remote_path"].startswith(device.workdir)
    assert entry["bench"]["latency_ms"]["samples"] and entry["bench"]["model"]["sha256"]
    assert uname in markdown_report(doc)


def test_each_spec_names_its_own_python_on_the_board(device, tiny_bundle):
    """?python= per device: the board's two interpreters (ai-edge-litert's, tflite-runtime's) in one session, while
    --python names neither."""
    from liteship.device.base import open_target
    from liteship.device.probe import probe

    old = os.environ.get("LITESHIP_TEST_DEVICE_OLD_PYTHON")
    if not old:
        pytest.skip("set LITESHIP_TEST_DEVICE_OLD_PYTHON to a second interpreter on the board")
    facts = []
    for python in (device.python, old):
        with open_target(f"{device_spec()}?python={python}") as target:
            facts.append(probe(target, workdir=f"{device.workdir}/probe", python="no-such-python3"))
    assert facts[1]["python"]["path"] == old and facts[0]["python"]["path"] != old
    assert facts[1]["tflite_runtime"].startswith("tflite-runtime ") and facts[0]["tflite_runtime"] != facts[1][
        "tflite_runtime"]
    spec = f"{device_spec()}?python={device.python}"
    [entry] = bench_targets(tiny_bundle, [spec], _settings(python="no-such-python3",
                                                           workdir=f"{device.workdir}/bench-python"))["results"]
    assert entry["ok"], entry["error"]
    assert entry["target"] == spec and entry["bench"]["host"]["machine"] == entry["device"]["abi"]


def device_min_runtime() -> str | None:
    """The TFLite runtime the board's interpreter is (LITESHIP_TEST_DEVICE_MIN_RUNTIME), when older than what
    today's converter writes for: bundles for it are converted with --min-runtime."""
    return os.environ.get("LITESHIP_TEST_DEVICE_MIN_RUNTIME") or None


@pytest.fixture(scope="module")
def gpt2_root(tmp_path_factory):
    """Tiny GPT-2 bundles as converted by default."""
    from tests.gpt2_fixtures import gpt2_bundles

    return gpt2_bundles(tmp_path_factory, quants=("fp32", "dynamic-int8"))


@pytest.fixture(scope="module")
def gpt2_for_device(gpt2_root):
    """{quant: bundle} the board's runtime loads: dynamic-int8 converted with --min-runtime where it needs it."""
    from liteship.convert.gpt2.export import export
    from tests.gpt2_fixtures import BUNDLE_OPTIONS

    bundles = {"fp32": gpt2_root / "gpt2-fp32", "dynamic-int8": gpt2_root / "gpt2-dynamic-int8"}
    target = device_min_runtime()
    if target:
        bundles["dynamic-int8"] = export(gpt2_root / "gpt2-checkpoint", gpt2_root / f"gpt2-dynamic-int8-rt{target}",
                                         quant="dynamic-int8", min_runtime=target, **BUNDLE_OPTIONS).bundle
    return bundles


@pytest.mark.parametrize("quant", ["fp32", "dynamic-int8"])
def test_gpt2_greedy_tokens_on_the_board_equal_the_hosts(device, gpt2_for_device, quant):
    """Where LITESHIP_TEST_DEVICE_MIN_RUNTIME is set (armv7l), dynamic-int8 is the --min-runtime conversion."""
    from tests.gpt2_fixtures import REFERENCE_PROMPT

    bundle = gpt2_for_device[quant]
    prompt = ",".join(map(str, REFERENCE_PROMPT))
    here = run_here(GREEDY_TOKENS, str(bundle), prompt, "24")
    there = device.python_json(GREEDY_TOKENS, device.push(bundle), prompt, "24")
    assert len(here) == 24
    assert there == here


@pytest.fixture(scope="module")
def bit_bundles(tmp_path_factory):
    """Tiny BiT bundles (random weights, 64x64 input) in three modes, converted for the board's runtime
    (--min-runtime LITESHIP_TEST_DEVICE_MIN_RUNTIME where set), and five scikit-image photos as PNG files."""
    pytest.importorskip("tensorflow")
    from liteship.convert.bit.config import tiny
    from liteship.convert.bit.export import export_bit
    from tests.convert.bit_fixtures import write_bit_npz, write_image_folder

    root = tmp_path_factory.mktemp("bit")
    npz = write_bit_npz(root / "BiT-tiny.npz", tiny())
    calibration = write_image_folder(root / "calibration")
    images = write_image_folder(root / "images", size=64)
    bundles = {q: export_bit(npz, root / q, variant="tiny", quant=q, image_size=64,
                             calibration=calibration if q == "int8" else None, min_runtime=device_min_runtime())
               for q in ("fp32", "dynamic-int8", "int8")}
    return bundles, images


# How far the board's class probabilities may be from the host's: fp32 differs only in summation order; the
# quantized kernels also round differently on x86 and ARM (a few output steps of the int8 softmax input).
SCORE_TOLERANCE = {"fp32": 1e-4, "dynamic-int8": 1e-2, "int8": 1e-2}
# ... and where the board runs tflite-runtime 2.14 while this host runs LiteRT, whose int8 kernels are newer and
# round differently. Measured on these bundles (the tiny random BiT, whose near-uniform probabilities amplify any
# rounding): the armv7l board vs this host's LiteRT, max 0.015 (dynamic-int8) and 0.035 (int8), top-1 always the
# same; tflite-runtime 2.14 on this x86 host differs from LiteRT as much (0.010, 0.065), and qemu's cortex-a7,
# cortex-a15 and max CPUs give the board identical scores. Bounds: 2x the board's.
SCORE_TOLERANCE_OLD_RUNTIME = {"fp32": 1e-4, "dynamic-int8": 0.03, "int8": 0.07}


def score_tolerance(quant: str, old_runtime: bool) -> float:
    return (SCORE_TOLERANCE_OLD_RUNTIME if old_runtime else SCORE_TOLERANCE)[quant]


@pytest.mark.parametrize("quant", ["fp32", "dynamic-int8", "int8"])
def test_bit_top5_on_the_board_equals_the_hosts(device, bit_bundles, quant):
    """int8 is the case qemu-aarch64's default CPU gets wrong (QEMU_CPU=cortex-a72 on the board fixes it)."""
    bundles, images = bit_bundles
    files = sorted(p for p in images.iterdir() if p.suffix == ".png")
    here = run_here(SCORES, str(bundles[quant]), str(images))
    folder = device.put_files(files, f"{device.workdir}/images")
    there = device.python_json(SCORES, device.push(bundles[quant]), folder)
    assert list(there) == list(here) == [p.name for p in files]
    for name in here:
        assert_same_top5(here[name], there[name], score_tolerance(quant, bool(device_min_runtime())),
                         f"{quant} {name}")

    emulated_cpu = device.target.run(["sh", "-c", 'printf %s "$QEMU_CPU"']).stdout
    aarch64 = device.target.run(["uname", "-m"]).stdout.strip() == "aarch64"
    if quant == "int8" and emulated_cpu and aarch64:  # qemu-arm's "max" computes the same as its cortex-a7
        # The trap the board's QEMU_CPU avoids, and proof that the tolerance above would catch it: on qemu's
        # default CPU ("max") LiteRT's int8 kernels give wrong scores (measured: 0.2 off, top-1 changed).
        wrong = device.python_json(SCORES, device.push(bundles[quant]), folder, env={"QEMU_CPU": "max"})
        with pytest.raises(AssertionError):
            for name in here:
                assert_same_top5(here[name], wrong[name], SCORE_TOLERANCE[quant], f"{quant} {name} on max")


BATCH_SCORES = """
import json
from liteship.runtime.classify import ImageClassifier
from liteship.runtime.images import iter_files
classifier = ImageClassifier(sys.argv[1], threads=1)
rows = [p.to_dict() for p in classifier.iter_classify(iter_files(sys.argv[2]), top_k=classifier.num_classes)]
print(json.dumps({r["path"].rsplit("/", 1)[-1]: [t["score"] for t in sorted(r["top_k"], key=lambda t: t["index"])]
                  for r in rows}))
"""


def test_an_int8_bit_in_batches_on_the_board_equals_the_hosts(device, bit_bundles, old_python):
    """Regression: on tflite-runtime on ARM an int8 FULLY_CONNECTED resized to a batch of 2 or more killed the
    process (SIGSEGV); the runtime runs such a model one image at a time there, so the board's default batches
    give the host's scores."""
    bundles, images = bit_bundles
    here = run_here(SCORES, str(bundles["int8"]), str(images))
    folder = device.put_files(sorted(p for p in images.iterdir() if p.suffix == ".png"), f"{device.workdir}/batch")
    there = device.python_json(BATCH_SCORES, device.push(bundles["int8"]), folder, python=old_python)
    assert list(there) == list(here)
    for name in here:
        assert_same_top5(here[name], there[name], score_tolerance("int8", True), f"int8 batched {name}")


@pytest.fixture
def old_python():
    python = os.environ.get("LITESHIP_TEST_DEVICE_OLD_PYTHON")
    if not python:
        pytest.skip("set LITESHIP_TEST_DEVICE_OLD_PYTHON to a device interpreter with tflite-runtime 2.14")
    return python


def test_runtime_older_than_the_model_is_refused_before_pushing(device, gpt2_root, old_python):
    from liteship.runtime.tflite_file import read_model

    bundle = gpt2_root / "gpt2-dynamic-int8"
    needed = read_model(bundle / "model.tflite").min_runtime_version()
    doc = bench_targets(bundle, [device_spec()], _settings(python=old_python, workdir=f"{device.workdir}/old"))
    [entry] = doc["results"]
    version = entry["device"]["python"]["tflite_runtime"]
    assert entry["device"]["python"]["ai_edge_litert"] is None and version.startswith("2.14")
    assert not entry["ok"] and not entry.get("push"), entry["error"]  # refused before pushing
    assert entry["error"] == (
        f"{device_spec()}: gpt2-dynamic-int8 needs TFLite runtime {needed} or newer (the file's "
        f"min_runtime_version), but tflite-runtime {version} would run it: pip install ai-edge-litert (64-bit ARM "
        f"and x86), or convert the model for that runtime (liteship convert ... --min-runtime "
        f"{'.'.join(version.split('.')[:2])})")
    listing = device.target.run(["sh", "-c", f"ls {device.workdir}/old 2>/dev/null || true"]).stdout
    assert "gpt2-dynamic-int8" not in listing


def test_the_old_runtime_itself_refuses_in_one_line(device, gpt2_root, old_python):
    """Run directly on the board (no host check in between), the runtime says the same instead of TFLite's
    'Didn't find op for builtin opcode' trace."""
    code = ("from liteship.runtime.interpreter import create_interpreter\n"
            "from liteship.errors import LiteshipError\n"
            "try:\n    create_interpreter(sys.argv[1] + '/model.tflite')\n"
            "except LiteshipError as exc:\n    print('error: %s' % exc); sys.exit(1)\n")
    refused = device.run_python(code, device.push(gpt2_root / "gpt2-dynamic-int8"), python=old_python)
    assert refused.returncode == 1
    [line] = refused.stdout.splitlines()
    assert "needs TFLite runtime" in line and "tflite-runtime 2.14" in line
    fp32 = device.run_python(code, device.push(gpt2_root / "gpt2-fp32"), python=old_python)
    assert fp32.returncode == 0, fp32.stdout + fp32.stderr  # an fp32 model is not refused: old op versions


def test_gpt2_for_2_14_on_the_old_runtime_equals_the_hosts(device, gpt2_root, old_python):
    """`convert --min-runtime 2.14` makes a dynamic-int8 GPT-2 that the board's tflite-runtime 2.14 loads, and its
    greedy tokens there are this host's (on every board with an old interpreter, aarch64 too)."""
    from liteship.convert.gpt2.export import export
    from tests.gpt2_fixtures import BUNDLE_OPTIONS, REFERENCE_PROMPT

    folder = gpt2_root / "gpt2-dynamic-int8-rt2.14"
    bundle = folder if folder.is_dir() else export(gpt2_root / "gpt2-checkpoint", folder, quant="dynamic-int8",
                                                   min_runtime="2.14", **BUNDLE_OPTIONS).bundle
    prompt = ",".join(map(str, REFERENCE_PROMPT))
    here = run_here(GREEDY_TOKENS, str(bundle), prompt, "24")
    there = device.python_json(GREEDY_TOKENS, device.push(bundle), prompt, "24", python=old_python)
    assert len(here) == 24 and there == here
