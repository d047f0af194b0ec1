"""Runtime commands: `liteship inspect` and `liteship run model` (`liteship bench` lives in device/cli.py:
the host is the `local` device)."""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from liteship.errors import RuntimeLiteshipError
from liteship.runtime.bundle import Bundle
from liteship.runtime.tflite_file import read_model


def describe(path: str | Path) -> dict:
    """What a bundle or lone .tflite holds, read without TensorFlow."""
    path = Path(path)
    bundle = Bundle.open(path, verify=False)
    info = read_model(bundle.model_path)
    manifest = info.manifest() or {}
    return {
        "path": str(bundle.model_path),
        "size_bytes": info.size_bytes,
        "family": manifest.get("family", "unknown"),
        "task": manifest.get("task", "unknown"),
        "quantization": manifest.get("quantization", "unknown"),
        "io_type": manifest.get("io_type"),
        "signatures": info.signature_specs(),
        "op_counts": info.op_counts(),
        "subgraphs": len(info.subgraphs),
        "tensors": sum(len(sg.tensors) for sg in info.subgraphs),
        "metadata": {name: len(raw) for name, raw in info.metadata.items()},
        "embedded_manifest": manifest,
    }


def _fmt_spec(spec: dict) -> str:
    shape = "x".join(str(d) for d in spec["shape"]) or "scalar"
    q = spec.get("quantization")
    quant = ""
    if q and not isinstance(q["scale"], list):
        quant = f"  (scale {q['scale']:.6g}, zero point {q['zero_point']})"
    elif q:
        quant = f"  (per-channel, {len(q['scale'])} scales)"
    return f"{spec['name']}: {spec['dtype']}[{shape}]{quant}"


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option("--verify/--no-verify", default=True, help="Check the bundle's sha256 sums (folders only).")
def inspect(model: Path, as_json: bool, verify: bool) -> None:
    """Show what a bundle or .tflite holds: signatures, inputs, outputs, ops, size and embedded metadata."""
    if verify and model.is_dir():
        Bundle.open(model, verify=True)
    d = describe(model)
    if as_json:
        click.echo(json.dumps(d, indent=2))
        return
    m = d["embedded_manifest"]
    click.echo(f"{d['path']}  {d['size_bytes'] / 1e6:.3f} MB")
    click.echo(f"family {d['family']}, task {d['task']}, quantization {d['quantization']}"
               + (f", io {d['io_type']}" if d["io_type"] else ""))
    if m.get("source", {}).get("sha256"):
        click.echo(f"source {m['source'].get('path', '?')} sha256 {m['source']['sha256'][:16]}...")
    for key, sig in d["signatures"].items():
        click.echo(f"signature {key}")
        for spec in sig["inputs"]:
            click.echo(f"  in   {_fmt_spec(spec)}")
        for spec in sig["outputs"]:
            click.echo(f"  out  {_fmt_spec(spec)}")
    total = sum(d["op_counts"].values())
    click.echo(f"ops ({total} in {d['subgraphs']} subgraph(s)): "
               + ", ".join(f"{name} x{n}" for name, n in d["op_counts"].items()))
    click.echo("metadata: " + ", ".join(f"{name} ({size} B)" for name, size in d["metadata"].items()))
    if m.get("preprocessing"):
        click.echo(f"preprocessing: {json.dumps(m['preprocessing'])}")
    if m.get("versions"):
        click.echo("made with: " + ", ".join(f"{k} {v}" for k, v in sorted(m["versions"].items())))


def _load_input(spec: str, expected: dict) -> np.ndarray:
    path = Path(spec)
    if not path.is_file():
        raise RuntimeLiteshipError(f"input {spec}: no such .npy file")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise RuntimeLiteshipError(f"input {spec}: not a readable .npy array ({exc})") from None
    want = [d for d in expected["shape"]]
    if arr.ndim == len(want) - 1:
        arr = arr[None]
    if arr.ndim != len(want) or any(w not in (-1, a) for w, a in zip(want, arr.shape)):
        raise RuntimeLiteshipError(f"input {spec} has shape {arr.shape}; {expected['name']} expects {want}")
    return arr.astype(expected["dtype"])


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--input", "inputs", multiple=True, metavar="[NAME=]FILE.npy", help="Input array(s) as .npy.")
@click.option("--signature", default=None, help="Signature to run (default: the only or serving_default).")
@click.option("--threads", type=int, default=None)
@click.option("--backend", default="auto", help="auto, litert, tflite-runtime or tf.")
@click.option("--delegate", default=None, help="External delegate library, or 'edgetpu'.")
@click.option("--output", type=click.Path(path_type=Path), default=None, help="Write outputs to this .npz.")
def run_model(bundle: Path, inputs, signature, threads, backend, delegate, output) -> None:
    """Run any bundle on .npy inputs and print its outputs."""
    from liteship.runtime.interpreter import create_interpreter

    b = Bundle.open(bundle)
    interp = create_interpreter(b.model_path, backend=backend, num_threads=threads, delegate=delegate)
    keys = list(interp.get_signature_list())
    signature = signature or ("serving_default" if "serving_default" in keys else keys[0])
    if signature not in keys:
        raise RuntimeLiteshipError(f"no signature {signature!r}; the model has: {', '.join(keys)}")
    specs = {s["name"]: s for s in b.signatures.get(signature, {}).get("inputs", [])}
    runner = interp.get_signature_runner(signature)
    names = list(runner.get_input_details())
    feed = {}
    for i, item in enumerate(inputs):
        name, _, file = item.rpartition("=")
        name = name or (names[i] if i < len(names) else "")
        if name not in names:
            raise RuntimeLiteshipError(f"input {name!r} is not one of: {', '.join(names)}")
        feed[name] = _load_input(file, specs.get(name) or {"name": name, **runner.get_input_details()[name],
                                                            "shape": list(runner.get_input_details()[name]["shape"])})
    missing = [n for n in names if n not in feed]
    if missing:
        raise RuntimeLiteshipError(f"missing input(s): {', '.join(missing)} (pass --input NAME=FILE.npy)")
    out = runner(**feed)
    if output:
        tmp = output.with_name(f".{output.name}.partial.npz")
        np.savez(tmp, **out)
        tmp.replace(output)
    for name, value in out.items():
        flat = value.reshape(-1)
        preview = np.array2string(flat[:10], precision=4, separator=", ")
        click.echo(f"{name}: {value.dtype}{list(value.shape)} {preview}{' ...' if flat.size > 10 else ''}"
                   + (f"  argmax {int(flat.argmax())}" if value.ndim == 2 and value.shape[0] == 1 else ""))


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("archive", type=click.Path(path_type=Path))
def pack(bundle: Path, archive: Path) -> None:
    """Pack a bundle folder into one .zip, .tar or .tar.gz file (checked first; written atomically).

    Every liteship command takes the archive wherever it takes the folder."""
    from liteship.runtime.bundle import pack_bundle

    click.echo(str(pack_bundle(bundle, archive)))
