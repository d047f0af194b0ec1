"""GPT-2 model configuration: one frozen dataclass, named presets, and the reader for a checkpoint's config.json."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from liteship.errors import ConvertError

# Hugging Face activation names -> how model.py computes them. "gelu_new", "gelu_fast" and "gelu_pytorch_tanh" are
# all the tanh approximation; "gelu" is the exact erf form.
ACTIVATIONS = {
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "gelu": "gelu_erf",
    "relu": "relu",
}


@dataclass(frozen=True)
class GPT2Config:
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    vocab_size: int = 50257  # grows when a fine-tune adds tokens
    n_positions: int = 1024  # learned position table length = the longest context the model knows
    layer_norm_epsilon: float = 1e-5
    activation: str = "gelu_new"  # a key of ACTIVATIONS
    bos_token_id: int = 50256
    eos_token_id: int = 50256
    n_inner: int | None = None  # MLP width; None is 4 * n_embd (structured pruning narrows it, convert/gpt2/prune.py)

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise ConvertError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.activation not in ACTIVATIONS:
            raise ConvertError(
                f"unsupported GPT-2 activation {self.activation!r}; supported: {', '.join(sorted(ACTIVATIONS))}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def inner(self) -> int:
        return self.n_inner or 4 * self.n_embd

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GPT2Config":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


PRESETS = {
    "distilgpt2": GPT2Config(n_layer=6, n_head=12, n_embd=768),  # 82M params
    "gpt2": GPT2Config(n_layer=12, n_head=12, n_embd=768),  # 124M params
    "gpt2-medium": GPT2Config(n_layer=24, n_head=16, n_embd=1024),  # 355M params
    "gpt2-large": GPT2Config(n_layer=36, n_head=20, n_embd=1280),  # 774M params
    "gpt2-xl": GPT2Config(n_layer=48, n_head=25, n_embd=1600),  # 1.5B params
}


def tiny(**overrides) -> GPT2Config:
    """A few-hundred-kilobyte GPT-2 for fast tests: 2 layers, 2 heads, 32 wide, 64 positions, 300 tokens."""
    base = dict(n_layer=2, n_head=2, n_embd=32, vocab_size=300, n_positions=64, bos_token_id=299, eos_token_id=299)
    base.update(overrides)
    return GPT2Config(**base)


def _first(value):
    return value[0] if isinstance(value, (list, tuple)) and value else value


def from_hf_config(hf: dict, *, source: str = "config.json") -> GPT2Config:
    """Read a Hugging Face GPT-2 config.json dict. Anything that is not GPT-2 is refused, naming what it is."""
    from liteship.runtime.files import json_kind, require

    if not isinstance(hf, dict):
        raise ConvertError(f"{source}: expected a JSON object, found {json_kind(hf)}")
    model_type = hf.get("model_type")
    if model_type != "gpt2":
        archs = ", ".join(hf.get("architectures") or []) or "no architectures listed"
        raise ConvertError(f"{source}: model_type is {model_type!r} ({archs}), not 'gpt2'")
    # Sizes the graph is built from: whole numbers >= 1 (a 0 or "four" would fail deep inside TensorFlow).
    for key in ("n_layer", "n_head", "n_embd", "vocab_size"):
        require(hf, key, int, source, error=ConvertError, minimum=1)
    for key in ("n_positions", "n_ctx"):
        require(hf, key, int, source, error=ConvertError, minimum=1, optional=True)
    require(hf, "layer_norm_epsilon", (int, float), source, error=ConvertError, minimum=0, optional=True)
    if hf["n_embd"] % hf["n_head"]:
        raise ConvertError(f"{source}: n_embd {hf['n_embd']} is not a multiple of n_head {hf['n_head']}")
    try:
        act = hf.get("activation_function", "gelu_new")
        eos = _first(hf.get("eos_token_id", 50256))  # newer configs may list several
        bos = _first(hf.get("bos_token_id", eos))
        # A fine-tune that added tokens stores the resized vocab_size; n_ctx is the old name for n_positions.
        return GPT2Config(
            n_layer=int(hf["n_layer"]),
            n_head=int(hf["n_head"]),
            n_embd=int(hf["n_embd"]),
            vocab_size=int(hf["vocab_size"]),
            n_positions=int(hf.get("n_positions", hf.get("n_ctx", 1024))),
            layer_norm_epsilon=float(hf.get("layer_norm_epsilon", 1e-5)),
            activation=act,
            bos_token_id=int(bos if bos is not None else -1),
            eos_token_id=int(eos if eos is not None else -1),
            n_inner=int(hf["n_inner"]) if hf.get("n_inner") else None,
        )
    except KeyError as e:
        raise ConvertError(f"{source}: GPT-2 config lacks {e.args[0]!r}") from None
    except (TypeError, ValueError) as e:  # eos_token_id: "x" and the like
        raise ConvertError(f"{source}: {e}") from None
