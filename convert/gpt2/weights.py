"""Strict loading of a Hugging Face GPT-2 checkpoint folder into the arrays convert/gpt2/model.py wants.

Formats: model.safetensors (optionally sharded with model.safetensors.index.json), pytorch_model.bin (optionally
sharded, needs torch), tf_model.h5 (transformers' TFGPT2 Keras-2 HDF5 file, read with h5py).
Every source tensor must be mapped, every model weight must be present, every shape must match: otherwise
ConvertError names the tensor and the file.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Union

import numpy as np

from liteship.convert.gpt2.config import GPT2Config, from_hf_config
from liteship.errors import ConvertError
from liteship.runtime.files import read_json

# ---- value transforms, named by direction --------------------------------------------------------------------

def keep(a: np.ndarray) -> np.ndarray:
    return a


def conv1d_in_out_to_fc_out_in(a: np.ndarray) -> np.ndarray:
    # GPT-2's Conv1D (PyTorch and TF alike) stores [in, out]; TFLite FULLY_CONNECTED wants [out, in]. Transposing
    # here means the converter folds no TRANSPOSE of a constant (less memory, no surprise ops).
    return np.ascontiguousarray(a.T)


# ---- the name table ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TensorName:
    model: str  # name in model.param_shapes()
    hf: str  # Hugging Face PyTorch state dict (safetensors / .bin), without the optional "transformer." prefix
    tf: tuple  # TFGPT2 HDF5 names after the "transformer/" scope, without ":0" (older and newer spellings)
    transform: Callable = keep


GLOBAL_TENSORS = [
    TensorName("wte.weight", "wte.weight", ("wte/weight", "wte/embeddings")),
    TensorName("wpe.weight", "wpe.weight", ("wpe/embeddings",)),
    TensorName("ln_f.weight", "ln_f.weight", ("ln_f/gamma",)),
    TensorName("ln_f.bias", "ln_f.bias", ("ln_f/beta",)),
]

LAYER_TENSORS = [  # "{i}" is the layer index
    TensorName("h.{i}.ln_1.weight", "h.{i}.ln_1.weight", ("h_._{i}/ln_1/gamma",)),
    TensorName("h.{i}.ln_1.bias", "h.{i}.ln_1.bias", ("h_._{i}/ln_1/beta",)),
    TensorName("h.{i}.attn.c_attn.weight", "h.{i}.attn.c_attn.weight", ("h_._{i}/attn/c_attn/weight",),
               conv1d_in_out_to_fc_out_in),
    TensorName("h.{i}.attn.c_attn.bias", "h.{i}.attn.c_attn.bias", ("h_._{i}/attn/c_attn/bias",)),
    TensorName("h.{i}.attn.c_proj.weight", "h.{i}.attn.c_proj.weight", ("h_._{i}/attn/c_proj/weight",),
               conv1d_in_out_to_fc_out_in),
    TensorName("h.{i}.attn.c_proj.bias", "h.{i}.attn.c_proj.bias", ("h_._{i}/attn/c_proj/bias",)),
    TensorName("h.{i}.ln_2.weight", "h.{i}.ln_2.weight", ("h_._{i}/ln_2/gamma",)),
    TensorName("h.{i}.ln_2.bias", "h.{i}.ln_2.bias", ("h_._{i}/ln_2/beta",)),
    TensorName("h.{i}.mlp.c_fc.weight", "h.{i}.mlp.c_fc.weight", ("h_._{i}/mlp/c_fc/weight",),
               conv1d_in_out_to_fc_out_in),
    TensorName("h.{i}.mlp.c_fc.bias", "h.{i}.mlp.c_fc.bias", ("h_._{i}/mlp/c_fc/bias",)),
    TensorName("h.{i}.mlp.c_proj.weight", "h.{i}.mlp.c_proj.weight", ("h_._{i}/mlp/c_proj/weight",),
               conv1d_in_out_to_fc_out_in),
    TensorName("h.{i}.mlp.c_proj.bias", "h.{i}.mlp.c_proj.bias", ("h_._{i}/mlp/c_proj/bias",)),
]

# Source tensors that are not weights: old transformers saved the causal-mask buffers; the LM head is tied to wte
# (checked equal, not loaded twice).
HF_NOT_WEIGHTS = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias)$")
HF_TIED_HEAD = "lm_head.weight"

WEIGHT_FILES = ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json",
                "pytorch_model.bin", "tf_model.h5")


def tensor_names(cfg: GPT2Config) -> list[TensorName]:
    out = list(GLOBAL_TENSORS)
    for i in range(cfg.n_layer):
        out += [TensorName(t.model.format(i=i), t.hf.format(i=i), tuple(n.format(i=i) for n in t.tf), t.transform)
                for t in LAYER_TENSORS]
    return out


# ---- readers: file -> {source name: array or LazyTensor} -----------------------------------------------------

@dataclass(frozen=True)
class LazyTensor:
    """A tensor whose data is read from its file only when asked for: a gpt2-xl checkpoint is 6 GB, and the
    exporter needs each large matrix once, after conversion (export.py), never all of them at the same time."""
    shape: tuple
    read: Callable[[], np.ndarray]


Tensor = Union[np.ndarray, LazyTensor]


def materialize(value: Tensor) -> np.ndarray:
    return value.read() if isinstance(value, LazyTensor) else value


def _safetensors_error(path: Path, e: Exception) -> ConvertError:
    return ConvertError(f"{path.name}: not a readable safetensors file ({str(e).splitlines()[0]})")


def _read_one_safetensor(path: Path, key: str) -> np.ndarray:
    from safetensors import SafetensorError, safe_open
    try:  # opened per tensor: the file's mapping (and the pages it touched) ends with each read
        with safe_open(str(path), framework="numpy") as f:
            return f.get_tensor(key)
    except (SafetensorError, OSError, ValueError, TypeError) as e:
        raise _safetensors_error(path, e) from None


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(str(path), framework="numpy") as f:
            slices = {k: f.get_slice(k) for k in f.keys()}
            if any(s.get_dtype() == "BF16" for s in slices.values()):
                return _read_torch_like_safetensors(path)
            return {k: LazyTensor(tuple(s.get_shape()), functools.partial(_read_one_safetensor, path, k))
                    for k, s in slices.items()}
    except (SafetensorError, OSError, ValueError, TypeError) as e:
        if "bf16" in str(e).lower() or "bfloat16" in str(e).lower():
            return _read_torch_like_safetensors(path)
        raise _safetensors_error(path, e) from None


def _read_torch_like_safetensors(path: Path) -> dict[str, np.ndarray]:
    _import_torch(path, why="it stores bfloat16 tensors, which numpy cannot hold")
    from safetensors.torch import load_file
    return {k: v.float().numpy() for k, v in load_file(str(path)).items()}


def _import_torch(path: Path, why: str):
    try:
        import torch
    except ImportError:
        raise ConvertError(f"{path.name}: reading it needs torch because {why}; pip install torch, or save the "
                           f"checkpoint as model.safetensors (model.save_pretrained(dir, safe_serialization=True))") from None
    return torch


def _read_torch_bin(path: Path) -> dict[str, np.ndarray]:
    torch = _import_torch(path, why="it is a PyTorch pickle")
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a damaged pickle/zip
        raise ConvertError(f"{path.name}: not a readable PyTorch checkpoint ({str(e).splitlines()[0]})") from None
    return {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in sd.items()}


def _read_sharded(index_path: Path, read_one) -> dict[str, Tensor]:
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (OSError, ValueError, KeyError) as e:
        raise ConvertError(f"{index_path.name}: not a shard index with a weight_map ({e})") from None
    out = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = index_path.parent / shard
        if not shard_path.is_file():
            raise ConvertError(f"{index_path.name} names shard {shard} which does not exist")
        out.update(read_one(shard_path))
    missing = sorted(set(weight_map) - set(out))
    if missing:
        raise ConvertError(f"{index_path.name} lists tensor {missing[0]!r} that no shard contains")
    return out


def _read_tf_h5(path: Path) -> dict[str, np.ndarray]:
    """TFGPT2's save_pretrained HDF5: datasets like '<layer>/<model scope>/transformer/h_._0/attn/c_attn/weight:0'.

    Returns names relative to the 'transformer/' scope without ':0' (e.g. 'h_._0/attn/c_attn/weight')."""
    import h5py
    out = {}
    try:
        with h5py.File(str(path), "r") as f:
            def visit(name, obj):
                if isinstance(obj, h5py.Dataset):
                    parts = name.split("/")
                    if "transformer" in parts[:-1]:
                        last = len(parts) - 1 - parts[::-1].index("transformer")
                        rel = "/".join(parts[last + 1:])
                    else:
                        rel = name
                    rel = rel[:-2] if rel.endswith(":0") else rel
                    if rel in out:
                        raise ConvertError(f"{path.name}: tensor {rel!r} appears twice")
                    out[rel] = np.asarray(obj, dtype=np.float32)
            f.visititems(visit)
    except ConvertError:
        raise
    except Exception as e:  # h5py raises OSError/KeyError/... for damaged files
        raise ConvertError(f"{path.name}: not a readable HDF5 file ({str(e).splitlines()[0]})") from None
    return out


# ---- the strict loader ---------------------------------------------------------------------------------------

def read_config(ckpt: Path) -> tuple[GPT2Config, dict]:
    path = Path(ckpt) / "config.json"
    if not path.is_file():
        raise ConvertError(f"{ckpt}: no config.json (is this a Hugging Face checkpoint folder?)")
    hf = read_json(path, kind=None, error=ConvertError)  # from_hf_config says what a non-object is
    return from_hf_config(hf, source=str(path)), hf


def find_weights(ckpt: Path) -> Path:
    for name in WEIGHT_FILES:
        if (Path(ckpt) / name).is_file():
            return Path(ckpt) / name
    raise ConvertError(f"{ckpt}: no weights found (looked for {', '.join(WEIGHT_FILES)})")


def weight_format(path: Path) -> str:
    n = path.name
    return {"model.safetensors": "safetensors", "model.safetensors.index.json": "safetensors-sharded",
            "pytorch_model.bin": "pytorch", "pytorch_model.bin.index.json": "pytorch-sharded",
            "tf_model.h5": "tf-h5"}[n]


def read_raw(path: Path) -> dict[str, Tensor]:
    fmt = weight_format(path)
    if fmt == "safetensors":
        return _read_safetensors(path)
    if fmt == "safetensors-sharded":
        return _read_sharded(path, _read_safetensors)
    if fmt == "pytorch":
        return _read_torch_bin(path)
    if fmt == "pytorch-sharded":
        return _read_sharded(path, _read_torch_bin)
    return _read_tf_h5(path)


def _mapped(value: Tensor, transform: Callable) -> np.ndarray:
    return transform(np.asarray(materialize(value), dtype=np.float32))


def map_tensors(raw: dict[str, Tensor], cfg: GPT2Config, *, source: str, fmt: str) -> dict[str, Tensor]:
    """Apply the name table strictly. raw: source names -> arrays or LazyTensors; returns model names -> float32
    arrays, or LazyTensors that read and transform their tensor when asked (shapes are checked here either way)."""
    from liteship.convert.gpt2.model import param_shapes
    shapes = param_shapes(cfg)
    names = tensor_names(cfg)
    tied_head = None
    if fmt == "tf-h5":
        lookup = {alias: t for t in names for alias in t.tf}
        src = dict(raw)
    else:
        lookup = {t.hf: t for t in names}
        src = {}
        for k, v in raw.items():
            key = k[len("transformer."):] if k.startswith("transformer.") else k
            if key == HF_TIED_HEAD:
                tied_head = v
            elif not HF_NOT_WEIGHTS.match(key):
                src[key] = v
    out = {}
    for key, value in src.items():
        t = lookup.get(key)
        if t is None:
            raise ConvertError(f"{source}: unmapped tensor {key!r} (not part of GPT-2 with n_layer={cfg.n_layer})")
        if t.model in out:
            raise ConvertError(f"{source}: tensor {key!r} duplicates {t.model!r}")
        source_shape = tuple(value.shape)
        if source_shape != _source_shape(t, shapes[t.model]):
            raise ConvertError(f"{source}: tensor {key!r} has shape {source_shape}, config.json implies "
                               f"{_source_shape(t, shapes[t.model])}")
        if isinstance(value, LazyTensor):
            out[t.model] = LazyTensor(shapes[t.model], functools.partial(_mapped, value, t.transform))
        else:
            out[t.model] = _mapped(value, t.transform)
    missing = [t for t in names if t.model not in out]
    if missing:
        t = missing[0]
        raise ConvertError(f"{source}: missing tensor {(t.tf[0] if fmt == 'tf-h5' else t.hf)!r}")
    if tied_head is not None:
        head = np.asarray(materialize(tied_head), dtype=np.float32)
        if head.shape != shapes["wte.weight"] or not np.array_equal(head, materialize(out["wte.weight"])):
            raise ConvertError(f"{source}: lm_head.weight differs from wte.weight; liteship's GPT-2 ties them")
    return out


def _source_shape(t: TensorName, model_shape: tuple) -> tuple:
    return tuple(reversed(model_shape)) if t.transform is conv1d_in_out_to_fc_out_in else model_shape


def load_checkpoint(ckpt, *, lazy: bool = False) -> tuple[GPT2Config, dict[str, Tensor], dict]:
    """checkpoint folder -> (config, {model name: float32 array}, source info for the manifest).

    ``lazy``: safetensors tensors stay LazyTensors (read on demand; other formats are read whole either way)."""
    ckpt = Path(ckpt)
    if not ckpt.is_dir():
        raise ConvertError(f"{ckpt}: not a folder")
    cfg, _ = read_config(ckpt)
    path = find_weights(ckpt)
    fmt = weight_format(path)
    params = map_tensors(read_raw(path), cfg, source=path.name, fmt=fmt)
    if not lazy:  # one tensor read at a time: the raw and the transformed copy of the whole model never coexist
        params = {name: materialize(value) for name, value in params.items()}
    return cfg, params, {"path": str(ckpt), "format": fmt, "weights": path.name}
