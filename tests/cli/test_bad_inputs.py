"""Every bad input gives one line `error: ...` naming the file or option, exit 1 (2 for usage), no traceback, the
old output intact and nothing partial left. One table row per case: the real CLI runs each as a subprocess."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.cli.harness import Case, assert_failed_cleanly, cli_env, run, tree_digest

# ---- setups: each makes the files one case needs in its own folder ----------------------------------------------


def bundle_copy(tmp: Path, fx: Path, name: str = "b", src: str = "classifier-fp32") -> Path:
    shutil.copytree(fx / src, tmp / name)
    return tmp / name


def with_manifest(content: bytes):
    def setup(tmp, fx):
        (bundle_copy(tmp, fx) / "manifest.json").write_bytes(content)
        np.save(tmp / "x.npy", np.zeros((12, 12, 3), np.float32))
    return setup


def edit_manifest(change):
    def setup(tmp, fx):
        path = bundle_copy(tmp, fx) / "manifest.json"
        manifest = json.loads(path.read_text())
        change(manifest)
        path.write_text(json.dumps(manifest))
    return setup


def checkpoint(change_file: str | None = None, content=None):
    """A copy of the tiny GPT-2 checkpoint with one file replaced (a callable edits the parsed JSON), and an old
    bundle at {tmp}/old that the failed conversion must leave as it was."""
    def setup(tmp, fx):
        shutil.copytree(fx / "gpt2-checkpoint", tmp / "ckpt")
        bundle_copy(tmp, fx, "old", "gpt2-fp32")
        if change_file is None:
            return
        path = tmp / "ckpt" / change_file
        if callable(content):
            data = json.loads(path.read_text())
            content(data)
            path.write_text(json.dumps(data))
        else:
            path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return setup


def arrays(tmp, fx):
    np.save(tmp / "x.npy", np.zeros((12, 12, 3), np.float32))
    np.savez(tmp / "x.npz", x=np.zeros((12, 12, 3), np.float32))
    (tmp / "empty.npy").write_bytes(b"")
    (tmp / "empty.npz").write_bytes(b"")
    (tmp / "afile").write_text("not a folder\n")
    bundle_copy(tmp, fx, "old")


def labels(content: bytes):
    def setup(tmp, fx):
        arrays(tmp, fx)
        (tmp / "labels.bin").write_bytes(content)
    return setup


def not_a_bundle(tmp, fx):
    (tmp / "mine").mkdir()
    (tmp / "mine" / "thesis.tex").write_text("years of work\n")


def tampered_zip(tmp, fx):
    import zipfile

    bundle = bundle_copy(tmp, fx)
    (bundle / "assets" / "labels.txt").write_text("evil\nb\nc\nd\ne\n")  # same length, other bytes
    with zipfile.ZipFile(tmp / "b.zip", "w") as zf:
        for f in sorted(bundle.rglob("*")):
            if f.is_file():
                zf.write(f, f"b/{f.relative_to(bundle)}")


def lone_tflite_without_signatures(tmp, fx):
    """The fixture model with its SignatureDefs removed (what older converters and other tools produce)."""
    fu = pytest.importorskip("tensorflow.lite.tools.flatbuffer_utils")
    model = fu.convert_bytearray_to_object(bytearray((fx / "classifier-fp32" / "model.tflite").read_bytes()))
    model.signatureDefs = []
    (tmp / "nosig.tflite").write_bytes(bytes(fu.convert_object_to_bytearray(model)))
    np.save(tmp / "x.npy", np.zeros((12, 12, 3), np.float32))


def lone_tflite_with_a_wrong_weight_shape(tmp, fx):
    """The fixture model with its dense layer's weight declared (5, 7) over an (5, 8) buffer: the file is whole,
    loads and lists its signature, and XNNPACK refuses to prepare it (what a bit flip in a shape does)."""
    fu = pytest.importorskip("tensorflow.lite.tools.flatbuffer_utils")
    model = fu.convert_bytearray_to_object(bytearray((fx / "classifier-fp32" / "model.tflite").read_bytes()))
    [weight] = [t for t in model.subgraphs[0].tensors if list(t.shape) == [5, 8]]
    weight.shape = np.array([5, 7], np.int32)
    (tmp / "bad.tflite").write_bytes(bytes(fu.convert_object_to_bytearray(model)))
    np.save(tmp / "x.npy", np.zeros((12, 12, 3), np.float32))


def text_file(tmp, fx):
    (tmp / "t.txt").write_text("a few words to fine-tune on. " * 40)


def set_key(key, value):
    def change(d):
        d[key] = value
    return change


GPT2 = ("run", "gpt2", "{fx}/gpt2-fp32", "--prompt", "the")
RUN = ("run", "model", "{fx}/classifier-fp32", "--input", "{tmp}/x.npy")
CONVERT_GPT2 = ("convert", "gpt2", "{tmp}/ckpt", "--out", "{tmp}/old")
CONVERT_SM = ("convert", "savedmodel", "{fx}/classifier-savedmodel", "--out", "{tmp}/old")

CASES = [
    # JSON that parses but has the wrong shape
    Case("manifest-is-a-list", ("inspect", "{tmp}/b"), ("manifest.json", "list"), setup=with_manifest(b"[]")),
    Case("manifest-is-null", ("run", "model", "{tmp}/b", "--input", "{tmp}/x.npy"), ("manifest.json", "null"),
         setup=with_manifest(b"null")),
    Case("manifest-not-utf8", ("inspect", "{tmp}/b"), ("manifest.json", "UTF-8"), setup=with_manifest(b"\xff{")),
    Case("files-entry-without-sha256", ("inspect", "{tmp}/b"), ("manifest.json", "sha256"),
         setup=edit_manifest(lambda m: m["files"]["model.tflite"].pop("sha256"))),
    Case("files-size-is-text", ("inspect", "{tmp}/b"), ("manifest.json", "size"),
         setup=edit_manifest(lambda m: m["files"]["model.tflite"].update(size="big"))),
    Case("asset-path-escapes", ("inspect", "{tmp}/b"), ("manifest.json", "labels"),
         setup=edit_manifest(lambda m: m["assets"].update(labels="../../etc/passwd"))),
    Case("config-json-is-a-list", CONVERT_GPT2, ("config.json",), setup=checkpoint("config.json", "[1, 2]"),
         keep=("old",)),
    Case("n-layer-is-text", CONVERT_GPT2, ("config.json", "n_layer"),
         setup=checkpoint("config.json", set_key("n_layer", "four")), keep=("old",)),
    Case("n-head-is-zero", CONVERT_GPT2, ("config.json", "n_head"),
         setup=checkpoint("config.json", set_key("n_head", 0)), keep=("old",)),
    Case("tokenizer-config-is-a-list", CONVERT_GPT2, ("tokenizer_config.json",),
         setup=checkpoint("tokenizer_config.json", "[]"), keep=("old",)),
    Case("generation-config-is-a-list", CONVERT_GPT2, ("generation_config.json",),
         setup=checkpoint("generation_config.json", "[]"), keep=("old",)),
    Case("vocab-json-corrupt", CONVERT_GPT2, ("vocab.json",), setup=checkpoint("vocab.json", '{"a": 0, "b": '),
         keep=("old",)),
    Case("vocab-json-not-a-map", CONVERT_GPT2, ("vocab.json",), setup=checkpoint("vocab.json", '["a", "b"]'),
         keep=("old",)),
    # OS errors
    Case("output-in-missing-folder", (*RUN, "--output", "{tmp}/nodir/out.npz"), ("--output", "nodir"),
         setup=arrays),
    Case("output-under-a-file", (*RUN, "--output", "{tmp}/afile/out.npz"), ("--output", "afile"), setup=arrays),
    Case("convert-out-under-a-file", ("convert", "savedmodel", "{fx}/classifier-savedmodel", "--out",
                                      "{tmp}/afile/b"), ("--out", "afile"), setup=arrays),
    Case("cache-under-a-file", ("inspect", "{tmp}/b.zip"), ("afile",), setup=lambda tmp, fx: (arrays(tmp, fx),
         tampered_zip(tmp, fx)), env={"LITESHIP_CACHE": "{tmp}/afile/cache"}),
    # Wrong kinds of file
    Case("npy-as-bit-checkpoint", ("convert", "bit", "{tmp}/x.npy", "--out", "{tmp}/old"), ("x.npy",),
         setup=arrays, keep=("old",)),
    Case("npz-as-run-input", ("run", "model", "{fx}/classifier-fp32", "--input", "{tmp}/x.npz"), ("x.npz",),
         setup=arrays),
    Case("empty-npy-input", ("run", "model", "{fx}/classifier-fp32", "--input", "{tmp}/empty.npy"),
         ("empty.npy",), setup=arrays),
    Case("empty-npz-input", ("run", "model", "{fx}/classifier-fp32", "--input", "{tmp}/empty.npz"),
         ("empty.npz",), setup=arrays),
    Case("binary-labels", (*CONVERT_SM, "--labels", "{tmp}/labels.bin"), ("labels.bin",),
         setup=labels(bytes(range(256))), keep=("old",)),
    Case("too-many-labels", (*CONVERT_SM, "--labels", "{tmp}/labels.bin"), ("labels.bin", "7", "5"),
         setup=labels(b"a\nb\nc\nd\ne\nf\ng\n"), keep=("old",)),
    Case("stop-not-utf8", (*GPT2, "--stop", "\udcff"), ("--stop",), exit_code=2),
    Case("prompt-not-utf8", ("run", "gpt2", "{fx}/gpt2-fp32", "--prompt", "\udcff\udcfe hi"), ("--prompt",),
         exit_code=2),
    Case("tampered-zip", ("inspect", "{tmp}/b.zip"), ("b.zip", "labels.txt"), setup=tampered_zip),
    Case("out-is-not-a-bundle", ("convert", "savedmodel", "{fx}/classifier-savedmodel", "--out", "{tmp}/mine"),
         ("--out", "mine"), setup=not_a_bundle, keep=("mine",), absent=("converting",)),
    Case("gpt2-out-is-not-a-bundle", ("convert", "gpt2", "{fx}/gpt2-checkpoint", "-o", "{tmp}/mine"),
         ("--out", "mine"), setup=not_a_bundle, keep=("mine",), absent=("reading", "converting")),
    Case("prune-out-is-not-a-prune-output", ("prune", "gpt2", "{fx}/gpt2-checkpoint", "--data", "{tmp}/t.txt", "-o",
                                             "{tmp}/mine"),
         ("--out", "mine"), setup=lambda tmp, fx: (not_a_bundle(tmp, fx), text_file(tmp, fx)), keep=("mine",),
         absent=("reading", "fine-tun")),
    Case("prune-out-under-a-file", ("prune", "gpt2", "{fx}/gpt2-checkpoint", "--data", "{tmp}/t.txt", "-o",
                                    "{tmp}/afile/p"),
         ("--out", "afile"), setup=lambda tmp, fx: (arrays(tmp, fx), text_file(tmp, fx)), absent=("reading",)),
    Case("out-is-a-file", ("convert", "savedmodel", "{fx}/classifier-savedmodel", "--out", "{tmp}/afile"),
         ("--out", "afile"), setup=arrays, keep=("afile",)),
    Case("lone-tflite-without-signatures", ("run", "model", "{tmp}/nosig.tflite", "--input", "{tmp}/x.npy"),
         ("nosig.tflite", "signatures"), setup=lone_tflite_without_signatures),
    Case("tflite-xnnpack-cannot-prepare", ("run", "model", "{tmp}/bad.tflite", "--input", "{tmp}/x.npy"),
         ("bad.tflite", "XNNPack"), setup=lone_tflite_with_a_wrong_weight_shape),
    Case("pack-unknown-suffix", ("pack", "{fx}/classifier-fp32", "{tmp}/b.rar"), ("b.rar",)),
    Case("kv-calibration-missing", ("convert", "gpt2", "{fx}/gpt2-checkpoint", "-o", "{tmp}/kv", "--kv-cache", "int8",
                                    "--kv-calibration", "{tmp}/none.txt"), ("--kv-calibration", "none.txt"),
         absent=("converting",)),
    Case("kv-calibration-not-text", ("convert", "gpt2", "{fx}/gpt2-checkpoint", "-o", "{tmp}/kv", "--kv-cache", "int8",
                                     "--kv-calibration", "{tmp}/x.npy"), ("--kv-calibration", "x.npy", "UTF-8"),
         setup=arrays, absent=("converting",)),
    # Out-of-range options: usage errors, exit 2, naming the option
    Case("kv-int8-without-calibration", ("convert", "gpt2", "{fx}/gpt2-checkpoint", "-o", "{tmp}/kv", "--kv-cache",
                                         "int8"), ("--kv-calibration",), exit_code=2, absent=("reading",)),
    Case("kv-calibration-without-int8", ("convert", "gpt2", "{fx}/gpt2-checkpoint", "-o", "{tmp}/kv",
                                         "--kv-calibration", "{tmp}/t.txt"), ("--kv-calibration",), exit_code=2,
         setup=text_file, absent=("reading",)),
    Case("kv-equalize-without-int8", ("convert", "gpt2", "{fx}/gpt2-checkpoint", "-o", "{tmp}/kv",
                                      "--no-kv-equalize"), ("--no-kv-equalize",), exit_code=2, absent=("reading",)),
    Case("temperature-nan", (*GPT2, "--temperature", "nan"), ("--temperature",), exit_code=2),
    Case("temperature-denormal", (*GPT2, "--temperature", "1e-320"), ("--temperature",), exit_code=2),
    Case("temperature-negative", (*GPT2, "--temperature", "-1"), ("--temperature",), exit_code=2),
    Case("seed-negative", (*GPT2, "--seed", "-1"), ("--seed",), exit_code=2),
    Case("max-new-tokens-negative", (*GPT2, "--max-new-tokens", "-5"), ("--max-new-tokens",), exit_code=2),
    Case("top-p-above-one", (*GPT2, "--top-p", "1.5"), ("--top-p",), exit_code=2),
    Case("top-p-nan", (*GPT2, "--top-p", "nan"), ("--top-p",), exit_code=2),
    Case("top-p-negative", (*GPT2, "--top-p", "-1"), ("--top-p",), exit_code=2),
    Case("threads-huge", (*RUN, "--threads", "100000"), ("--threads",), exit_code=2, setup=arrays),
    Case("threads-zero", (*GPT2, "--threads", "0"), ("--threads",), exit_code=2),
    Case("image-size-zero", ("convert", "bit", "{tmp}/x.npy", "--out", "{tmp}/o", "--image-size", "0"),
         ("--image-size",), exit_code=2, setup=arrays),
    Case("bench-runs-zero", ("bench", "{fx}/classifier-fp32", "--runs", "0"), ("--runs",), exit_code=2),
    Case("std-zero", (*CONVERT_SM, "--std", "0"), ("--std",), exit_code=2),
    Case("unknown-option", ("inspect", "{fx}/classifier-fp32", "--bogus"), ("--bogus",), exit_code=2),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, fixture_bundles: Path, tmp_path: Path):
    fx = fixture_bundles
    if case.setup:
        case.setup(tmp_path, fx)
    kept = {name: tree_digest(tmp_path / name) for name in case.keep}
    args = [a.format(fx=fx, tmp=tmp_path) for a in case.args]
    env = cli_env(tmp_path, **{k: v.format(fx=fx, tmp=tmp_path) for k, v in case.env.items()})
    result = run(args, tmp_path, env=env)
    assert_failed_cleanly(result, exit_code=case.exit_code, names=case.names, tmp=tmp_path)
    for text in case.absent:
        assert text not in result.stderr, f"the run got as far as {text!r}: {result.stderr}"
    for name, digest in kept.items():
        assert tree_digest(tmp_path / name) == digest, f"{name} changed"


def test_liteship_debug_shows_the_whole_chain(fixture_bundles, tmp_path):
    """LITESHIP_DEBUG=1: the traceback with the causes `raise ... from None` hides, then the same one line."""
    (tmp_path / "empty.npy").write_bytes(b"")
    args = ["run", "model", fixture_bundles / "classifier-fp32", "--input", tmp_path / "empty.npy"]
    plain = run(args, tmp_path)
    debug = run(args, tmp_path, env=cli_env(tmp_path, LITESHIP_DEBUG="1"))
    assert plain.returncode == debug.returncode == 1
    assert "Traceback" not in plain.stderr
    assert "Traceback" in debug.stderr and "EOFError" in debug.stderr  # numpy's, hidden by `from None`
    assert debug.stderr.strip().splitlines()[-1] == plain.stderr.strip().splitlines()[-1]


def test_a_full_tmpdir_is_one_line(tmp_path):
    """TensorFlow's SaveV2 reports a full $TMPDIR as ResourceExhaustedError; the CLI says it in one line."""
    keras = pytest.importorskip("keras")
    import subprocess

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((200,)), keras.layers.Dense(3000), keras.layers.Dense(2)])
    model.save(tmp_path / "m.keras")  # ~2.4 MB of weights: more than the 1 MiB $TMPDIR below holds
    small = tmp_path / "small-tmp"
    small.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], capture_output=True)
    if made.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        env = cli_env(tmp_path, TMPDIR=small)
        result = run(["convert", "keras", tmp_path / "m.keras", "--out", tmp_path / "b"], tmp_path, env=env)
        assert_failed_cleanly(result, exit_code=1)
        assert "space" in result.stderr.lower() or "resource" in result.stderr.lower(), result.stderr
        print(result.stderr.strip().splitlines()[-1])
        assert not list(small.glob("liteship-*"))  # ours; TensorFlow's autograph leaves its own files there
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


def test_inspect_says_a_lone_tflite_has_no_signatures(fixture_bundles, tmp_path):
    lone_tflite_without_signatures(tmp_path, fixture_bundles)
    result = run(["inspect", tmp_path / "nosig.tflite"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "no signatures (SignatureDefs)" in result.stdout and "signature serving_default" not in result.stdout
    result = run(["inspect", fixture_bundles / "classifier-fp32"], tmp_path)
    assert "signature serving_default" in result.stdout
