"""Runtime commands: `liteship inspect` and `liteship run model` (`liteship bench` lives in device/cli.py:
the host is the `local` device)."""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from liteship.errors import RuntimeLiteshipError
from liteship.options import Threads
from liteship.runtime.bundle import Bundle
from liteship.runtime.files import atomic_output, check_output_path, load_array
from liteship.runtime.tflite_file import read_model
from liteship.units import size_text


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
        "signature_defs": bool(info.signatures),  # False: "serving_default" above is subgraph 0's inputs/outputs
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
@click.option("--verify/--no-verify", default=True, help="Check the bundle's sha256 sums (folders and archives).")
def inspect(model: Path, as_json: bool, verify: bool) -> None:
    """Show what a bundle or .tflite holds: signatures, inputs, outputs, ops, size and embedded metadata."""
    if verify and not (model.is_file() and model.suffix == ".tflite"):
        Bundle.open(model, verify=True)  # folders and archives alike: a tampered zip is refused like a folder
    d = describe(model)
    if as_json:
        click.echo(json.dumps(d, indent=2))
        return
    m = d["embedded_manifest"]
    click.echo(f"{d['path']}  {size_text(d['size_bytes'])}")
    click.echo(f"family {d['family']}, task {d['task']}, quantization {d['quantization']}"
               + (f", io {d['io_type']}" if d["io_type"] else ""))
    if m.get("source", {}).get("sha256"):
        click.echo(f"source {m['source'].get('path', '?')} sha256 {m['source']['sha256'][:16]}...")
    for key, sig in d["signatures"].items():
        click.echo(f"signature {key}" if d["signature_defs"] else
                   "no signatures (SignatureDefs) in the file; subgraph 0's inputs and outputs (run model needs "
                   "signatures):")
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


def _load_input(spec: str, expected: dict) -> tuple[np.ndarray, str]:
    """The array for one input, converted to the tensor's dtype, and a note when that meant quantizing."""
    arr = load_array(spec, error=RuntimeLiteshipError)
    if isinstance(arr, dict):
        raise RuntimeLiteshipError(f"--input {spec}: a .npz archive of {len(arr)} arrays; give one .npy per input")
    if arr.dtype.kind not in "biuf":
        raise RuntimeLiteshipError(f"--input {spec}: a {arr.dtype} array; the model takes numbers")
    want = [int(d) for d in expected["shape"]]
    if arr.ndim == len(want) - 1:
        arr = arr[None]
    if arr.ndim != len(want) or any(w not in (-1, a) for w, a in zip(want, arr.shape)):
        raise RuntimeLiteshipError(f"--input {spec} has shape {arr.shape}; {expected['name']} expects {want}")
    dtype = np.dtype(expected["dtype"])
    if arr.dtype == dtype or dtype.kind == "f":
        return arr.astype(dtype), ""
    scale, zero_point = _scale_zero_point(expected)
    if arr.dtype.kind == "f" and scale:
        # A float array for a quantized input: quantize it the way the model's own input tensor says, instead of
        # casting 0.7 to 0.
        from liteship.runtime.classify import quantize

        return quantize(arr, {"name": expected["name"], "dtype": dtype, "quantization": (scale, zero_point)}), \
            f"{expected['name']}: float input quantized to {dtype} (scale {scale:.6g}, zero point {zero_point})"
    if arr.dtype.kind == "f" and not np.array_equal(arr, np.round(arr)):
        raise RuntimeLiteshipError(f"--input {spec}: {expected['name']} takes {dtype} values without a quantization "
                                   "scale; the array holds fractions")
    info = np.iinfo(dtype)
    if arr.size and (arr.min() < info.min or arr.max() > info.max):
        raise RuntimeLiteshipError(f"--input {spec}: values outside {dtype}'s range [{info.min}, {info.max}]")
    return arr.astype(dtype), ""


def _scale_zero_point(details: dict) -> tuple[float, int]:
    q = details.get("quantization")
    if isinstance(q, dict):  # the bundle manifest's form
        if isinstance(q.get("scale"), list):
            return 0.0, 0  # per-channel on an input: not a plain affine map
        return float(q.get("scale") or 0.0), int(q.get("zero_point") or 0)
    if isinstance(q, (tuple, list)) and len(q) == 2:
        return float(q[0] or 0.0), int(q[1] or 0)
    return 0.0, 0


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _labels(bundle: Bundle) -> list[str]:
    if "labels" not in (bundle.manifest.get("assets") or {}):
        return []
    try:
        return [line.strip() for line in bundle.asset("labels").read_text(encoding="utf-8").splitlines()
                if line.strip()]
    except (OSError, UnicodeDecodeError):
        return []


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--input", "inputs", multiple=True, metavar="[NAME=]FILE.npy", help="Input array(s) as .npy.")
@click.option("--signature", default=None, help="Signature to run (default: the only or serving_default).")
@click.option("--threads", type=Threads(), default=None, help="Interpreter threads.")
@click.option("--backend", default="auto", help="auto, litert, tflite-runtime or tf.")
@click.option("--delegate", default=None, help="External delegate library, or 'edgetpu'.")
@click.option("--output", "-o", "--out", "output", type=click.Path(path_type=Path), default=None,
              help="Write outputs to this .npz.")
@click.option("--json", "as_json", is_flag=True, help="Print the outputs as JSON (every value, dequantized).")
def run_model(bundle: Path, inputs, signature, threads, backend, delegate, output, as_json) -> None:
    """Run any bundle on .npy inputs and print its outputs.

    A float array given to an int8/uint8 input is quantized with that input's scale and zero point (said on
    stderr); quantized outputs are printed dequantized. The --output .npz holds the outputs as the model gave them.
    """
    from liteship.runtime.interpreter import create_interpreter

    if output is not None:
        check_output_path(output, option="--output", error=RuntimeLiteshipError)
    b = Bundle.open(bundle)
    interp = create_interpreter(b.model_path, backend=backend, num_threads=threads, delegate=delegate)
    keys = list(interp.get_signature_list())
    if not keys:
        raise RuntimeLiteshipError(f"{b.model_path}: the model has no signatures (SignatureDefs); convert it from a "
                                   "SavedModel or with liteship convert so its inputs and outputs have names")
    signature = signature or ("serving_default" if "serving_default" in keys else keys[0])
    if signature not in keys:
        raise RuntimeLiteshipError(f"--signature {signature!r}: the model has {', '.join(keys)}")
    try:
        runner = interp.get_signature_runner(signature)
        details = runner.get_input_details()
    except (RuntimeError, ValueError) as exc:  # a damaged model the interpreter loaded but cannot prepare
        raise RuntimeLiteshipError(f"{b.model_path}: the interpreter cannot prepare it: {_first_line(exc)}") from None
    names = list(details)
    feed = {}
    for i, item in enumerate(inputs):
        name, _, file = item.rpartition("=")
        name = name or (names[i] if i < len(names) else "")
        if name not in names:
            raise RuntimeLiteshipError(f"--input {item}: the model's inputs are {', '.join(names)}")
        spec = {"name": name, "dtype": details[name]["dtype"], "shape": list(details[name]["shape"]),
                "quantization": details[name].get("quantization")}
        feed[name], note = _load_input(file, spec)
        if note:
            click.echo(f"note: {note}", err=True)
    missing = [n for n in names if n not in feed]
    if missing:
        raise RuntimeLiteshipError(f"missing input(s): {', '.join(missing)} (pass --input NAME=FILE.npy)")
    try:
        out = runner(**feed)
    except (RuntimeError, ValueError) as exc:
        raise RuntimeLiteshipError(f"{b.model_path}: the interpreter failed to run it: {_first_line(exc)}") from None
    if output:
        with atomic_output(output, option="--output", error=RuntimeLiteshipError) as tmp, open(tmp, "wb") as f:
            np.savez(f, **out)
    labels = _labels(b)
    output_details = runner.get_output_details()
    records = {}
    for name, value in out.items():
        scale, zero_point = _scale_zero_point(output_details.get(name, {}))
        record = {"dtype": str(value.dtype), "shape": list(value.shape), "dequantized": None}
        kind = f"{value.dtype}{list(value.shape)}"
        if value.dtype.kind in "iu" and scale:
            value = (value.astype(np.float32) - zero_point) * np.float32(scale)
            kind += f" dequantized (scale {scale:.6g}, zero point {zero_point})"
            record["dequantized"] = {"scale": scale, "zero_point": zero_point}
        flat = value.reshape(-1)
        preview = np.array2string(flat[:10], precision=4, separator=", ")
        line = f"{name}: {kind} {preview}{' ...' if flat.size > 10 else ''}"
        record["values"] = value.tolist()
        if value.ndim == 2 and value.shape[0] == 1 and flat.size:
            best = int(flat.argmax())
            label = labels[best] if len(labels) == flat.size else None
            line += f"  argmax {best}" + (f" ({label})" if label is not None else "")
            record.update(argmax=best, label=label)
        records[name] = record
        if not as_json:
            click.echo(line)
    if as_json:
        click.echo(json.dumps({"bundle": str(bundle), "signature": signature, "outputs": records}))


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("archive", type=click.Path(path_type=Path))
def pack(bundle: Path, archive: Path) -> None:
    """Pack a bundle folder into one .zip, .tar or .tar.gz file (checked first; written atomically).

    Every liteship command takes the archive wherever it takes the folder."""
    from liteship.runtime.bundle import pack_bundle

    click.echo(str(pack_bundle(bundle, archive)))
