"""`liteship demo`: the main job on the built-in default, end to end on this host, with no downloads.

Three models that liteship builds itself, each converted in every mode it supports, then run through the
device-side runtime and benchmarked on this host (the `local` device), one comparison table each:

- classifier: a small CNN trained on scikit-learn's digits (real handwritten digits that ship with the package);
  accuracy on held-out digits, int8 calibrated on training images only.
- gpt2: a small GPT-2 trained for a minute on Python's own documentation (pydoc_data.topics) with PyTorch and a
  byte-level BPE tokenizer trained on the same text; greedy continuations compared token by token with PyTorch,
  prefill and decode tok/s.
- bit: a BiT (pre-activation ResNetV2, GroupNorm, weight standardization) with random weights in the original
  .npz naming; int8 calibrated on scikit-image's sample photos; top-1 agreement with fp32 on those photos.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import click
import numpy as np

from liteship.convert.quant import CLASSIFIER_MODES, SUFFIXES, Quant
from liteship.errors import LiteshipError
from liteship.options import POSITIVE_FLOAT, POSITIVE_INT, Threads
from liteship.runtime.files import write_atomic

IMAGE_SIZE = 16  # digits are 8x8; 2x nearest upscale keeps them exact and gives the convolutions room


def digits_dataset(seed: int = 0):
    """(x_train, y_train, x_test, y_test) as float32 NHWC in [0, 1], stratified 75/25."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)
    x = np.repeat(np.repeat(x, 2, axis=1), 2, axis=2)[..., None]  # (n, 16, 16, 1)
    return train_test_split(x, digits.target.astype(np.int64), test_size=0.25, stratify=digits.target,
                            random_state=seed)


def train_classifier(x_train, y_train, *, epochs: int, seed: int = 0):
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((IMAGE_SIZE, IMAGE_SIZE, 1), name="image"),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(10, name="logits"),
    ])
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=epochs, batch_size=64, verbose=0)
    return model


def accuracy_of_bundle(bundle_dir: Path, x_test: np.ndarray, y_test: np.ndarray, threads: int | None) -> float:
    """Top-1 accuracy through the device-side runtime (quantizes int inputs, dequantizes int outputs)."""
    from liteship.runtime.bundle import Bundle
    from liteship.runtime.classify import dequantize, quantize
    from liteship.runtime.interpreter import create_interpreter

    bundle = Bundle.open(bundle_dir)
    interp = create_interpreter(bundle.model_path, num_threads=threads)
    runner = interp.get_signature_runner()
    (in_name, in_d), = runner.get_input_details().items()
    (out_name, out_d), = runner.get_output_details().items()
    correct = 0
    for x, y in zip(x_test, y_test):
        out = runner(**{in_name: quantize(x[None], dict(in_d, name=in_name))})[out_name]
        out = dequantize(out, dict(out_d, name=out_name))
        correct += int(out.argmax() == y)
    return correct / len(y_test)


def run_demo(workdir: Path, *, epochs: int = 8, runs: int = 200, threads: int | None = None,
             modes: tuple[str, ...] = tuple(q.value for q in CLASSIFIER_MODES)) -> dict:
    """Builds, converts, evaluates and benchmarks; returns the rows of the comparison table."""
    from liteship.convert.cli import convert_to_bundle
    from liteship.convert.tflite import keras_as_saved_model
    from liteship.runtime.bench import benchmark

    workdir.mkdir(parents=True, exist_ok=True)
    x_train, x_test, y_train, y_test = digits_dataset()
    click.echo(f"[liteship] training a digits classifier ({len(x_train)} train / {len(x_test)} held-out images)",
               err=True)
    t0 = time.perf_counter()
    model = train_classifier(x_train, y_train, epochs=epochs)
    keras_acc = float((model.predict(x_test, verbose=0).argmax(-1) == y_test).mean())
    click.echo(f"[liteship] trained in {time.perf_counter() - t0:.1f} s, Keras accuracy {keras_acc:.4f}", err=True)
    source = workdir / "digits.keras"
    model.save(source)
    calibration = workdir / "calibration.npy"
    np.save(calibration, x_train[:200])
    (workdir / "labels.txt").write_text("".join(f"{d}\n" for d in range(10)))

    rows = [{"mode": "keras (source)", "size_bytes": source.stat().st_size, "accuracy": keras_acc}]
    with keras_as_saved_model(source) as saved_model:
        for mode in modes:
            quant = Quant.parse(mode)
            out = workdir / f"digits-{SUFFIXES[quant]}"
            convert_to_bundle(saved_model, source=source, out=out, quant=quant,
                              calibration=calibration if quant.needs_calibration else None, io_type="float32",
                              allow_tf_ops=False, labels=workdir / "labels.txt", signature=None,
                              mean=(0.0,), std=(1.0,))
            acc = accuracy_of_bundle(out, x_test, y_test, threads)
            bench = benchmark(out, runs=runs, warmup=20, threads=threads)
            rows.append({"mode": quant.value, "bundle": str(out), "size_bytes": bench["model"]["size_bytes"],
                         "accuracy": acc, "p50_ms": bench["latency_ms"]["p50"], "p90_ms": bench["latency_ms"]["p90"],
                         "init_ms": bench["init_ms"], "backend": bench["runtime"]["backend"]})
    return {"rows": rows, "keras_accuracy": keras_acc, "test_images": int(len(y_test))}


def format_rows(rows: list[dict]) -> str:
    fp32 = next((r for r in rows if r["mode"] == "fp32"), None)
    lines = ["| model | size (kB) | size vs fp32 | held-out accuracy | p50 ms | p90 ms | init ms |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        rel = f"{r['size_bytes'] / fp32['size_bytes']:.2f}x" if fp32 and "p50_ms" in r else ""
        timing = (f"{r['p50_ms']:.4f} | {r['p90_ms']:.4f} | {r['init_ms']:.2f}" if "p50_ms" in r else " | | ")
        lines.append(f"| {r['mode']} | {r['size_bytes'] / 1e3:.1f} | {rel} | {r['accuracy']:.4f} | {timing} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- GPT-2

GPT2_PROMPT = "The return statement"


def build_gpt2_checkpoint(folder: Path, *, train_seconds: float, seed: int = 0) -> dict:
    """A Hugging Face GPT-2 folder (config.json, model.safetensors, vocab.json, merges.txt) trained here.

    The tokenizer and the model learn from pydoc_data.topics, Python's own help text, which ships with Python."""
    from pydoc_data.topics import topics

    import torch
    import transformers
    from tokenizers import ByteLevelBPETokenizer

    folder.mkdir(parents=True, exist_ok=True)
    texts = [topics[k] for k in sorted(topics)]
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(texts, vocab_size=2048, min_frequency=2, special_tokens=["<|endoftext|>"],
                            show_progress=False)
    tok.save_model(str(folder))
    eos = tok.token_to_id("<|endoftext|>")
    stream = []
    for text in texts:
        stream += tok.encode(text).ids + [eos]
    data = torch.tensor(stream, dtype=torch.long)

    torch.manual_seed(seed)
    config = transformers.GPT2Config(vocab_size=tok.get_vocab_size(), n_positions=256, n_embd=256, n_layer=4,
                                     n_head=4, bos_token_id=eos, eos_token_id=eos)
    model = transformers.GPT2LMHeadModel(config)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    steps, t0, loss = 0, time.perf_counter(), float("nan")
    model.train()
    while time.perf_counter() - t0 < train_seconds:
        starts = torch.randint(0, len(data) - 129, (16,))
        batch = torch.stack([data[i : i + 129] for i in starts.tolist()])  # (16, 129)
        out = model(input_ids=batch[:, :-1], labels=batch[:, :-1])
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        loss, steps = out.loss.item(), steps + 1
    model.eval()
    model.save_pretrained(folder)
    return {"params": sum(p.numel() for p in model.parameters()), "steps": steps, "loss": loss, "model": model,
            "tokenizer": tok}


def run_gpt2(workdir: Path, *, train_seconds: float, threads: int | None, new_tokens: int = 48) -> list[dict]:
    import torch

    from liteship.convert.gpt2.export import export
    from liteship.runtime.generate import TextGenerator
    from liteship.runtime.generation_bench import benchmark_generation

    click.echo(f"[liteship] training a small GPT-2 on pydoc_data.topics for {train_seconds:.0f} s", err=True)
    ckpt = workdir / "gpt2-checkpoint"
    built = build_gpt2_checkpoint(ckpt, train_seconds=train_seconds)
    click.echo(f"[liteship] {built['params'] / 1e6:.1f}M params, {built['steps']} steps, loss {built['loss']:.2f}",
               err=True)
    prompt_ids = built["tokenizer"].encode(GPT2_PROMPT).ids
    with torch.no_grad():  # PyTorch's greedy continuation: the reference every bundle is compared with
        ids = torch.tensor([prompt_ids])
        for _ in range(new_tokens):
            ids = torch.cat([ids, built["model"](ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    reference = ids[0, len(prompt_ids):].tolist()

    rows = []
    for quant in ("fp32", "fp16", "dynamic-int8"):
        out = workdir / f"gpt2-{SUFFIXES[Quant.parse(quant)]}"
        click.echo(f"[liteship] converting GPT-2 ({quant})", err=True)
        report = export(ckpt, out, quant=quant, max_context=256, prefill_len=64)
        gen = TextGenerator(out, threads=threads)
        tokens = list(gen.generate_ids(prompt_ids, new_tokens, temperature=0.0, stop_on_eos=False))
        same = next((i for i, (a, b) in enumerate(zip(tokens, reference)) if a != b), len(reference))
        speed = benchmark_generation(out, threads=threads, prompt_tokens=128, new_tokens=32, context=256)
        rows.append({"mode": quant, "size_bytes": (out / "model.tflite").stat().st_size,
                     "same_as_pytorch": same, "of": len(reference), "prefill_tok_s": speed["prefill_tok_s"],
                     "decode_tok_s": speed["decode_tok_s"], "convert_s": report.seconds,
                     # greedy decoding of a model trained for a minute repeats itself: show a seeded sample
                     "text": gen.generate(GPT2_PROMPT, new_tokens, temperature=0.8, top_k=40, seed=0).text})
    return rows


def format_gpt2(rows: list[dict]) -> str:
    fp32 = rows[0]["size_bytes"]
    lines = ["| GPT-2 bundle | size (MB) | size vs fp32 | greedy tokens equal to PyTorch | prefill tok/s | "
             "decode tok/s @256 |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['size_bytes'] / 1e6:.2f} | {r['size_bytes'] / fp32:.2f}x | "
                     f"{r['same_as_pytorch']}/{r['of']} | {r['prefill_tok_s']:.0f} | {r['decode_tok_s']:.0f} |")
    lines.append("")
    lines.append(f"{GPT2_PROMPT!r} -> (dynamic-int8, sampled: temperature 0.8, top-k 40, seed 0) "
                 f"{rows[-1]['text'][:200]!r}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ BiT

def write_random_bit_npz(path: Path, config, seed: int = 0) -> Path:
    """Random weights in the original BiT .npz naming, from liteship's own name table (He-normal kernels)."""
    from liteship.convert.bit.weights import PREFIX, expected_tensors

    rng = np.random.default_rng(seed)
    tensors = {}
    for name, target in expected_tensors(config).items():
        if target.weight == "kernel":
            fan_in = int(np.prod(target.shape[:-1]))
            value = rng.normal(0.0, np.sqrt(2.0 / fan_in), target.shape)
        elif target.weight == "gamma":
            value = 1.0 + 0.1 * rng.standard_normal(target.shape)
        else:
            value = 0.05 * rng.standard_normal(target.shape)
        tensors[PREFIX + name] = value.astype(np.float32)
    np.savez(path, **tensors)
    return path


def sample_photos(folder: Path) -> list[Path]:
    """scikit-image's bundled sample photos as PNG files (real images, no download)."""
    from PIL import Image
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry",
                 "motorcycle_left", "retina"):
        if hasattr(data, name):
            try:
                Image.fromarray(getattr(data, name)()).convert("RGB").save(folder / f"{name}.png")
            except Exception:  # a sample the installed scikit-image cannot produce offline
                continue
            paths.append(folder / f"{name}.png")
    return paths


def run_bit(workdir: Path, *, threads: int | None, runs: int) -> list[dict]:
    from liteship.convert.bit.config import tiny
    from liteship.convert.bit.export import export_bit
    from liteship.runtime.bench import benchmark
    from liteship.runtime.classify import ImageClassifier

    workdir.mkdir(parents=True, exist_ok=True)
    config = tiny(num_classes=10, image_size=96)
    npz = write_random_bit_npz(workdir / "bit-tiny.npz", config)
    photos = sample_photos(workdir / "photos")
    rows, top1 = [], None
    for quant in ("fp32", "fp16", "dynamic-int8", "int8"):
        out = workdir / f"bit-{SUFFIXES[Quant.parse(quant)]}"
        click.echo(f"[liteship] converting BiT ({quant})", err=True)
        export_bit(npz, out, variant="tiny", quant=quant, image_size=96,
                   calibration=workdir / "photos" if quant == "int8" else None)
        clf = ImageClassifier(out, threads=threads)
        outputs = clf.outputs(np.concatenate(list(_bit_inputs(clf, photos))))  # (photos, classes)
        labels = outputs.argmax(-1)
        if top1 is None:
            top1, ref = labels, outputs
        bench = benchmark(out, runs=runs, warmup=5, threads=threads)
        rows.append({"mode": quant, "size_bytes": bench["model"]["size_bytes"],
                     "agree": float((labels == top1).mean()), "max_logit_diff": float(np.abs(outputs - ref).max()),
                     "p50_ms": bench["latency_ms"]["p50"], "p90_ms": bench["latency_ms"]["p90"]})
    return rows


def _bit_inputs(classifier, photos: list[Path]):
    from liteship.runtime.images import preprocess

    for path in photos:
        yield preprocess(path, classifier.bundle.preprocessing)[None]


def format_bit(rows: list[dict]) -> str:
    fp32 = rows[0]["size_bytes"]
    lines = ["| BiT bundle (tiny, 96 px) | size (MB) | size vs fp32 | top-1 = fp32 on photos | max logit diff | "
             "p50 ms | p90 ms |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['size_bytes'] / 1e6:.2f} | {r['size_bytes'] / fp32:.2f}x | "
                     f"{r['agree']:.0%} | {r['max_logit_diff']:.3f} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} |")
    return "\n".join(lines)


PARTS = ("classifier", "gpt2", "bit")
# The demo trains its models here, so it needs the workstation extras, not only the device install:
# part -> {module it imports: the distribution that provides it}.
NEEDS = {
    "classifier": {"tensorflow": "tensorflow", "sklearn": "scikit-learn", "PIL": "pillow"},
    "gpt2": {"tensorflow": "tensorflow", "torch": "torch", "transformers": "transformers", "tokenizers": "tokenizers"},
    "bit": {"tensorflow": "tensorflow", "skimage": "scikit-image", "PIL": "pillow"},
}


def missing_distributions(parts: list[str]) -> list[str]:
    """The distributions the demo's ``parts`` need that are not installed (found without importing them)."""
    import importlib.util

    return sorted({dist for part in parts for module, dist in NEEDS[part].items()
                   if importlib.util.find_spec(module) is None})

# The demo's budget (liteship check): what its models must meet on this host, a shared 2-core machine, so the
# speed limits are loose; the quality limits are the ones a release would use.
DEMO_BUDGET = """\
max_file_size_mb = 20             # the GPT-2 fp32 file is ~15 MB
max_p90_ms = 50
max_init_ms = 5000
max_peak_rss_mb = 2000
max_accuracy_drop_pct = 2         # digits: held-out accuracy points lost against fp32
max_perplexity_increase_pct = 10  # GPT-2: on stdlib docstrings it never saw
min_agreement_pct = 90
min_decode_tok_s = 50             # GPT-2 only, like the perplexity limit; accuracy applies to the digits only
"""


def write_labeled_digits(folder: Path, x: np.ndarray, y: np.ndarray) -> Path:
    """Held-out digits as PNG files in class folders, the layout `liteship check --data` reads."""
    from PIL import Image

    for i, (image, label) in enumerate(zip(x, y)):
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.round(image[..., 0] * 255).astype(np.uint8), mode="L").save(folder / str(label) / f"{i}.png")
    return folder


def held_out_text() -> str:
    """Text the demo GPT-2 never trained on (it learned pydoc_data.topics): docstrings of stdlib modules."""
    import argparse
    import functools
    import json as json_module
    import textwrap

    return "\n\n".join(m.__doc__ for m in (json_module, argparse, textwrap, functools))


def budget_check(workdir: Path, parts: list[str], *, threads: int | None, runs: int) -> str:
    """`liteship check` of the demo's bundles on this host, then `liteship report`: the tables, as text."""
    from liteship.device.bench import BenchSettings
    from liteship.device.budget import load_budget
    from liteship.device.budget_table import failures, format_text
    from liteship.device.check import run_check
    from liteship.device.gate_cli import BudgetExceeded
    from liteship.device.html_report import render_html, render_markdown

    write_atomic(workdir / "budget.toml", DEMO_BUDGET)
    budget = load_budget(workdir / "budget.toml")
    settings = BenchSettings(runs=runs, warmup=5, threads=threads)
    checks = []
    if "classifier" in parts:
        _, x_test, _, y_test = digits_dataset()
        data = write_labeled_digits(workdir / "classifier" / "held-out", x_test, y_test)
        bundles = [workdir / "classifier" / f"digits-{SUFFIXES[Quant.parse(q)]}" for q in ("fp32", "dynamic-int8",
                                                                                            "int8")]
        checks.append(("classifier", bundles, data))
    if "gpt2" in parts:
        data = workdir / "gpt2" / "held-out.txt"
        write_atomic(data, held_out_text())
        checks.append(("gpt2", [workdir / "gpt2" / f"gpt2-{SUFFIXES[Quant.parse(q)]}" for q in ("fp32",
                                                                                               "dynamic-int8")], data))
    tables, results, failed = [], [], []
    for name, bundles, data in checks:
        click.echo(f"[liteship] liteship check {name} bundles --budget {workdir / 'budget.toml'} --data {data}",
                   err=True)
        doc = run_check([str(b) for b in bundles], budget, devices=["local"], quants=[], settings=settings,
                        results_dir=workdir / f"check-{name}", data=data,
                        progress=lambda m: click.echo(f"[liteship] {m}", err=True))
        results.append(workdir / f"check-{name}")
        tables.append(f"## Budget check: {name}\n\n" + format_text(doc))
        failed += failures(doc)
    if results:
        write_atomic(workdir / "report.html", render_html(results))
        write_atomic(workdir / "report.md", render_markdown(results))
    text = "\n\n".join(tables)
    if failed:
        click.echo(text)
        raise BudgetExceeded("the demo's models are over its budget: " + "; ".join(failed))
    return text


@click.command()
@click.option("--workdir", type=click.Path(path_type=Path), default=Path("liteship-demo"), show_default=True,
              help="Where the models, bundles and results go.")
@click.option("--only", default=",".join(PARTS), show_default=True, help="Which models, comma-separated.")
@click.option("--epochs", type=POSITIVE_INT, default=8, show_default=True, help="Classifier training epochs.")
@click.option("--gpt2-seconds", type=POSITIVE_FLOAT, default=60, show_default=True, help="GPT-2 training time.")
@click.option("--runs", type=POSITIVE_INT, default=200, show_default=True, help="Timed runs per bundle.")
@click.option("--threads", type=Threads(), default=None, help="Interpreter threads.")
def command(workdir: Path, only: str, epochs: int, gpt2_seconds: float, runs: int, threads: int | None) -> None:
    """Build a classifier, a GPT-2 and a BiT here, convert each in every mode, run and bench them on this host."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parts = [p.strip() for p in only.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise click.BadParameter(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    missing = missing_distributions(parts)
    if missing:
        raise LiteshipError(f"liteship demo needs {', '.join(missing)}, which are not installed: "
                            'pip install "liteship[convert,dev]"')
    workdir.mkdir(parents=True, exist_ok=True)
    results, tables = {}, []
    if "classifier" in parts:
        results["classifier"] = run_demo(workdir / "classifier", epochs=epochs, runs=runs, threads=threads)
        tables.append("## Digits classifier (scikit-learn digits, held-out accuracy)\n\n"
                      + format_rows(results["classifier"]["rows"]))
    if "gpt2" in parts:
        rows = run_gpt2(workdir / "gpt2", train_seconds=gpt2_seconds, threads=threads)
        results["gpt2"] = rows
        tables.append("## GPT-2 (trained here on pydoc_data.topics)\n\n" + format_gpt2(rows))
    if "bit" in parts:
        results["bit"] = run_bit(workdir / "bit", threads=threads, runs=max(10, runs // 10))
        tables.append("## BiT (random weights, scikit-image sample photos)\n\n" + format_bit(results["bit"]))
    report = "\n\n".join(tables) + "\n"
    write_atomic(workdir / "results.json", json.dumps(results, indent=2, default=str) + "\n")
    write_atomic(workdir / "results.md", report)
    click.echo(report)
    if "classifier" in parts or "gpt2" in parts:
        click.echo(budget_check(workdir, parts, threads=threads, runs=runs) + "\n")
        click.echo(f"the HTML report of the budget check: {workdir / 'report.html'} (Markdown: report.md)")
    click.echo(f"bundles, results.json and results.md are in {workdir}/")
