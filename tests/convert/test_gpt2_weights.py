"""GPT-2 config reading and the strict weight loader, for every checkpoint format (no TensorFlow needed)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from liteship.convert.gpt2 import weights as W
from liteship.convert.gpt2.config import PRESETS, GPT2Config, from_hf_config, tiny
from liteship.errors import ConvertError
from tests.gpt2_fixtures import hf_config, make_checkpoint, state_dict_numpy

pytest.importorskip("torch")


def expected_params(model) -> dict:
    """What the loader must produce, computed independently: PyTorch's tensors, Conv1D ones transposed."""
    out = {}
    for k, v in state_dict_numpy(model).items():
        if k.endswith(".attn.bias") or k.endswith(".masked_bias"):
            continue
        is_conv1d = v.ndim == 2 and (".attn.c_" in k or ".mlp.c_" in k)
        out[k] = v.T if is_conv1d else v
    return out


def test_presets_and_from_hf_config():
    assert PRESETS["gpt2"] == GPT2Config()
    assert PRESETS["gpt2-xl"].head_dim == 64
    d = hf_config(tiny(vocab_size=302)).to_dict()  # a fine-tune that added two tokens resized the vocab
    cfg = from_hf_config(d)
    assert (cfg.vocab_size, cfg.n_positions, cfg.n_layer, cfg.activation) == (302, 64, 2, "gelu_new")
    old = dict(d, n_ctx=32)
    del old["n_positions"]
    assert from_hf_config(old).n_positions == 32  # n_ctx is the old spelling


def test_not_gpt2_config_names_what_it_is():
    with pytest.raises(ConvertError, match=r"model_type is 'llama' \(LlamaForCausalLM\), not 'gpt2'"):
        from_hf_config({"model_type": "llama", "architectures": ["LlamaForCausalLM"]})
    with pytest.raises(ConvertError, match="lacks 'n_embd'"):
        from_hf_config({"model_type": "gpt2", "n_layer": 2, "n_head": 2, "vocab_size": 10})
    with pytest.raises(ConvertError, match="activation 'swish'"):
        from_hf_config(dict(hf_config(tiny()).to_dict(), activation_function="swish"))


@pytest.mark.parametrize("fmt", ["safetensors", "sharded", "bin", "h5"])
def test_each_format_loads_exactly_the_torch_weights(tmp_path, fmt):
    model = make_checkpoint(tmp_path, fmt=fmt)
    cfg, params, source = W.load_checkpoint(tmp_path)
    assert cfg == tiny()
    if fmt == "sharded":
        assert len(list(tmp_path.glob("model-*.safetensors"))) > 1, "the fixture did not shard"
    assert source["format"] == {"safetensors": "safetensors", "sharded": "safetensors-sharded", "bin": "pytorch",
                                "h5": "tf-h5"}[fmt]
    want = expected_params(model)
    assert sorted(params) == sorted(want)
    for name, value in want.items():
        np.testing.assert_array_equal(params[name], value, err_msg=name)


def test_added_tokens_grow_the_vocab(tmp_path):
    make_checkpoint(tmp_path, tiny(vocab_size=302), added=["<|user|>", "<|bot|>"])
    cfg, params, _ = W.load_checkpoint(tmp_path)
    assert cfg.vocab_size == 302 and params["wte.weight"].shape == (302, 32)


def _resave(folder, mutate):
    from safetensors.numpy import load_file, save_file

    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    mutate(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


def test_missing_tensor_is_named(tmp_path):
    make_checkpoint(tmp_path)
    _resave(tmp_path, lambda t: t.pop("transformer.h.1.mlp.c_fc.bias"))
    with pytest.raises(ConvertError, match=r"model.safetensors: missing tensor 'h.1.mlp.c_fc.bias'"):
        W.load_checkpoint(tmp_path)


def test_wrong_shape_is_named(tmp_path):
    make_checkpoint(tmp_path)
    _resave(tmp_path, lambda t: t.update({"transformer.h.0.attn.c_proj.weight": np.zeros((32, 16), np.float32)}))
    with pytest.raises(ConvertError, match=r"'h.0.attn.c_proj.weight' has shape \(32, 16\), config.json implies "
                                           r"\(32, 32\)"):
        W.load_checkpoint(tmp_path)


def test_unmapped_tensor_is_named(tmp_path):
    make_checkpoint(tmp_path)
    _resave(tmp_path, lambda t: t.update({"transformer.h.7.ln_1.weight": np.ones(32, np.float32)}))
    with pytest.raises(ConvertError, match=r"unmapped tensor 'h.7.ln_1.weight'"):
        W.load_checkpoint(tmp_path)


def test_untied_head_is_refused(tmp_path):
    make_checkpoint(tmp_path)
    _resave(tmp_path, lambda t: t.update({"lm_head.weight": np.ones((300, 32), np.float32)}))
    with pytest.raises(ConvertError, match="lm_head.weight differs from wte.weight"):
        W.load_checkpoint(tmp_path)


def test_not_gpt2_checkpoint(tmp_path):
    make_checkpoint(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["model_type"] = "bert"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConvertError, match="model_type is 'bert'"):
        W.load_checkpoint(tmp_path)


@pytest.mark.parametrize("fmt,name", [("safetensors", "model.safetensors"), ("h5", "tf_model.h5"),
                                      ("bin", "pytorch_model.bin")])
def test_corrupt_file_names_the_file(tmp_path, fmt, name):
    make_checkpoint(tmp_path, fmt=fmt)
    path = tmp_path / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    with pytest.raises(ConvertError, match=name.replace(".", r"\.")):
        W.load_checkpoint(tmp_path)


def test_bin_without_torch_says_what_to_do(tmp_path, monkeypatch):
    make_checkpoint(tmp_path, fmt="bin")
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    with pytest.raises(ConvertError, match="pytorch_model.bin: reading it needs torch.*pip install torch.*safetensors"):
        W.load_checkpoint(tmp_path)


def test_no_weights_and_no_config(tmp_path):
    with pytest.raises(ConvertError, match="no config.json"):
        W.load_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(hf_config(tiny()).to_dict()))
    with pytest.raises(ConvertError, match="no weights found"):
        W.load_checkpoint(tmp_path)


def test_eos_given_as_a_list_takes_the_first():
    cfg = from_hf_config(dict(hf_config(tiny()).to_dict(), eos_token_id=[299, 5], bos_token_id=None))
    assert cfg.eos_token_id == 299 and cfg.bos_token_id == -1


@pytest.mark.parametrize("fmt", ["safetensors", "sharded"])
def test_lazy_load_reads_each_tensor_only_when_asked(tmp_path, monkeypatch, fmt):
    """lazy=True (what export uses) leaves safetensors tensors on disk as LazyTensors of the model's shape; each
    reads and transforms to exactly what the eager load gives, and no tensor is read before it is asked for."""
    make_checkpoint(tmp_path, fmt=fmt)
    _, eager, _ = W.load_checkpoint(tmp_path)
    reads = []
    real = W._read_one_safetensor
    monkeypatch.setattr(W, "_read_one_safetensor", lambda path, key: reads.append(key) or real(path, key))
    _, lazy, _ = W.load_checkpoint(tmp_path, lazy=True)
    assert reads == [] and all(isinstance(v, W.LazyTensor) for v in lazy.values())
    for name, value in eager.items():
        assert lazy[name].shape == value.shape
        np.testing.assert_array_equal(W.materialize(lazy[name]), value, err_msg=name)
    assert len(reads) == len(eager)
