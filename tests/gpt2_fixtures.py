"""Tiny GPT-2 checkpoints made here with transformers + torch (random weights, no downloads), in every weight format
liteship reads, with a tiny byte-level BPE tokenizer trained on a fixed sentence. Imported by the GPT-2 tests."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from liteship.convert.gpt2.config import GPT2Config, tiny  # noqa: E402
from liteship.runtime.tokenizer import bytes_to_unicode  # noqa: E402

EOS = "<|endoftext|>"
TRAINING_TEXT = ("the quick brown fox jumps over the lazy dog; then the dog sleeps in the sun, "
                 "and the fox thinks about other things. " * 3)
# Larger than transformers' default 0.02 so that random logits have clear winners: greedy comparisons then test
# the model, not float rounding between near-equal logits.
INIT_RANGE = 0.3


def train_bpe(n_merges: int) -> tuple[dict, list]:
    """Byte-level BPE with n_merges merges learned on TRAINING_TEXT; vocab = 256 byte symbols + merges."""
    b2u = bytes_to_unicode()
    vocab = {b2u[b]: i for i, b in enumerate(sorted(b2u))}
    words = [tuple(b2u[b] for b in ((" " + w) if i else w).encode()) for i, w in enumerate(TRAINING_TEXT.split())]
    merges = []
    while len(merges) < n_merges:
        pairs = Counter(p for w in words for p in zip(w, w[1:]))
        if not pairs:
            break
        (a, b), _ = pairs.most_common(1)[0]
        merges.append((a, b))
        vocab[a + b] = len(vocab)
        new = []
        for w in words:
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == (a, b):
                    out.append(a + b)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new.append(tuple(out))
        words = new
    return vocab, merges


def hf_config(cfg: GPT2Config):
    import transformers

    return transformers.GPT2Config(
        n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, vocab_size=cfg.vocab_size,
        n_positions=cfg.n_positions, layer_norm_epsilon=cfg.layer_norm_epsilon,
        activation_function=cfg.activation, bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id,
        initializer_range=INIT_RANGE)


def torch_model(cfg: GPT2Config, seed: int = 0, *, trained_like: bool = True):
    """transformers' GPT-2 with random weights; ``trained_like`` (the default) gives them trained statistics."""
    import torch
    import transformers

    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(hf_config(cfg)).eval()
    if trained_like:
        make_trained_like(model, seed)
    return model


# Freshly initialised GPT-2 weights hide bugs: LayerNorm weights all 1 and biases all 0 make a missing or misplaced
# LayerNorm affine invisible, zero linear biases hide a dropped bias, and near-uniform attention makes a wrong mask or
# cache slot change little. Trained models have none of that: their LayerNorm scales spread around (and away from)
# 1, biases are non-zero, and attention heads look at a few positions. These are the statistics tests get.
LN_SCALE_SPREAD, LN_BIAS_STD, LINEAR_BIAS_STD = 0.5, 0.3, 0.2
QK_GAIN = 2.0  # multiplies both q and k: attention logits x4, so each head's softmax is peaked (see the test)


def make_trained_like(model, seed: int = 0) -> None:
    """Give a transformers GPT-2 trained-looking weights in place: LayerNorm scales 1 +- 0.5 (a few near 0 or
    negative, as in real checkpoints) and biases, non-zero linear biases, and q/k scaled so attention is peaked."""
    import torch

    g = torch.Generator().manual_seed(seed + 1)

    def normal(t, std):
        return torch.randn(t.shape, generator=g) * std

    with torch.no_grad():
        for name, p in model.transformer.named_parameters():
            if ".ln_" in f".{name}" and name.endswith("weight"):
                p.copy_(1.0 + normal(p, LN_SCALE_SPREAD))
            elif name.endswith("bias"):  # LayerNorm shifts and every linear bias
                p.copy_(normal(p, LN_BIAS_STD if ".ln_" in f".{name}" else LINEAR_BIAS_STD))
        E = model.config.n_embd
        for block in model.transformer.h:
            block.attn.c_attn.weight[:, :2 * E] *= QK_GAIN  # Conv1D weight is [in, out]: columns q | k | v
            block.attn.c_attn.bias[:2 * E] *= QK_GAIN


def add_kv_outliers(model, channels=(3, 17, 40), gain: float = 50.0) -> None:
    """Give a transformers GPT-2 the K and V outlier channels trained GPT-2 has, in place, without changing what it
    computes: K channel c times ``gain`` and Q channel c divided by it (q . k stays), V channel c times ``gain``
    and c_proj's input row c divided by it (the attention output is a weighted sum of V rows, read by c_proj)."""
    import torch

    E = model.config.n_embd
    with torch.no_grad():
        for block in model.transformer.h:
            w, b = block.attn.c_attn.weight, block.attn.c_attn.bias  # Conv1D [in, out]: columns q | k | v
            for c in channels:
                for column, factor in ((c, 1 / gain), (E + c, gain), (2 * E + c, gain)):
                    w[:, column] *= factor
                    b[column] *= factor
                block.attn.c_proj.weight[c, :] /= gain  # [in, out]: input row c


def write_tokenizer(folder: Path, cfg: GPT2Config, added: list[str] = ()) -> None:
    """vocab.json + merges.txt filling ids [0, vocab_size - 1 - len(added)), EOS after them, added tokens last."""
    vocab, merges = train_bpe(cfg.vocab_size - 257 - len(added))
    vocab[EOS] = len(vocab)
    assert vocab[EOS] == cfg.eos_token_id, (vocab[EOS], cfg.eos_token_id)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    if added:
        (folder / "added_tokens.json").write_text(json.dumps({t: len(vocab) + i for i, t in enumerate(added)}))
    (folder / "special_tokens_map.json").write_text(json.dumps({"eos_token": EOS, "bos_token": EOS}))


# TFGPT2 (transformers 4, Keras 2) HDF5 names, as save_pretrained wrote them: one Keras layer "transformer" whose
# weights live under the model scope "tfgp_t2lm_head_model/transformer/...", Conv1D weights in [in, out].
TF_H5_NAMES = {
    "wte.weight": "wte/weight", "wpe.weight": "wpe/embeddings",
    "ln_f.weight": "ln_f/gamma", "ln_f.bias": "ln_f/beta",
}
TF_H5_LAYER = {"ln_1.weight": "ln_1/gamma", "ln_1.bias": "ln_1/beta", "ln_2.weight": "ln_2/gamma",
               "ln_2.bias": "ln_2/beta"}


def hf_to_tf_h5_name(name: str) -> str:
    if name in TF_H5_NAMES:
        rel = TF_H5_NAMES[name]
    else:
        _, i, rest = name.split(".", 2)
        rel = f"h_._{i}/" + TF_H5_LAYER.get(rest, rest.replace(".", "/"))
    return f"tfgp_t2lm_head_model/transformer/{rel}:0"


def write_tf_h5(path: Path, state: dict) -> None:
    import h5py

    with h5py.File(str(path), "w") as f:
        f.attrs["layer_names"] = [b"transformer"]
        g = f.create_group("transformer")
        names = [hf_to_tf_h5_name(k) for k in state]
        g.attrs["weight_names"] = [n.encode() for n in names]
        for n, v in zip(names, state.values()):
            g.create_dataset(n, data=v)


def state_dict_numpy(model) -> dict:
    """The model's own tensors without the tied head and the "transformer." prefix."""
    sd = model.state_dict()
    return {k[len("transformer."):]: v.detach().numpy().copy() for k, v in sd.items() if k != "lm_head.weight"}


def make_checkpoint(folder: Path, cfg: GPT2Config | None = None, *, fmt: str = "safetensors", added: list[str] = (),
                    seed: int = 0, trained_like: bool = True):
    """Write a GPT-2 checkpoint folder; returns the torch model it holds. fmt: safetensors | sharded | bin | h5.
    ``trained_like=False`` keeps transformers' fresh initialisation (LayerNorm 1 and 0, zero biases)."""
    import torch

    cfg = cfg or tiny()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = torch_model(cfg, seed, trained_like=trained_like)
    if fmt == "safetensors":
        model.save_pretrained(folder)
    elif fmt == "sharded":
        model.save_pretrained(folder, max_shard_size="50KB")
    else:
        model.config.save_pretrained(folder)
        if fmt == "bin":
            torch.save(model.state_dict(), folder / "pytorch_model.bin")
        elif fmt == "h5":
            write_tf_h5(folder / "tf_model.h5", state_dict_numpy(model))
        else:
            raise ValueError(fmt)
    write_tokenizer(folder, cfg, added)
    return model


def torch_logits(model, ids) -> np.ndarray:
    """Logits (T, V) of the whole sequence from PyTorch, without a cache."""
    import torch

    with torch.no_grad():
        return model(torch.tensor([list(ids)])).logits[0].numpy()


def torch_greedy(model, ids, n):
    import torch

    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, eos_token_id=None,
                             pad_token_id=0)[0].tolist()
    return out[len(ids):]


def liteship_run(bundle, ids, n):
    """(ids + n greedy tokens, logits of every position but the last from prefill and decode, the n tokens)."""
    from liteship.runtime.generate import KVCacheSession, TextGenerator

    tokens = list(TextGenerator(bundle).generate_ids(ids, n, temperature=0, stop_on_eos=False))
    s = KVCacheSession(bundle)
    seq = ids + tokens
    logits = np.concatenate([s.prefill(ids)] + [s.decode(t)[None] for t in tokens[:-1]])
    return seq, logits, tokens


# ---- bundles shared by the export and runtime tests -----------------------------------------------------------

BUNDLE_OPTIONS = {"max_context": 64, "prefill_len": 8}  # 8-token chunks so that prompts span several chunks
REFERENCE_PROMPT = [5, 77, 200, 13, 42, 256, 7, 99, 150, 3, 61, 290, 18, 33, 8, 120, 240, 271, 64, 1]  # 20 ids


def build_gpt2(outdir: Path, quants=("fp32",)) -> None:
    """Tiny GPT-2 bundles ``gpt2-<quant>`` plus ``gpt2.reference.npz`` (PyTorch logits of REFERENCE_PROMPT followed by
    PyTorch's own greedy continuation, and that continuation). Needs TensorFlow and torch; the runtime tests can
    then run from ``outdir`` with neither."""
    import torch

    from liteship.convert.gpt2.export import export

    outdir = Path(outdir)
    ckpt = outdir / "gpt2-checkpoint"
    model = make_checkpoint(ckpt)
    with torch.no_grad():
        out = model.generate(torch.tensor([REFERENCE_PROMPT]), max_new_tokens=40, do_sample=False,
                             eos_token_id=None, pad_token_id=0)[0].tolist()
    continuation = out[len(REFERENCE_PROMPT):]
    np.savez(outdir / "gpt2.reference.npz", prompt=np.array(REFERENCE_PROMPT), continuation=np.array(continuation),
             logits=torch_logits(model, out))
    for q in quants:
        export(ckpt, outdir / f"gpt2-{q}", quant=q, **BUNDLE_OPTIONS)


def previous_layout(monkeypatch, *, fixed_cache: bool = False) -> None:
    """Make export write the GPT-2 graph of bundles converted before prefill's chunk was left open: prefill takes
    embeds[P, E], positions[P] and one mask[P, S+P] and returns stacked k_new/v_new[L, H, P, hd], its attention one
    softmax over the concatenated cache and chunk scores. ``fixed_cache``: the layout before that, every slot count
    fixed at C and no `rows`. The runtime must keep running both."""
    import tensorflow as tf

    from liteship.convert.gpt2 import model as gpt2_model

    decode_attend = gpt2_model.attend

    def attend(q, k, v, k_cache, v_cache, mask):
        T = q.shape[1]
        if T == 1:
            return decode_attend(q, k, v, k_cache, v_cache, mask)
        cached = tf.matmul(q, k_cache, transpose_b=True)  # (H, T, S)
        itself = tf.matmul(q, k, transpose_b=True)  # (H, T, T)
        probs = tf.nn.softmax(tf.concat([cached, itself], axis=-1) + mask, axis=-1)  # (H, T, S+T)
        return tf.matmul(probs[:, :, :-T], v_cache) + tf.matmul(probs[:, :, -T:], v)  # (H, T, hd)

    def input_signature(self, decode):
        cfg, T = self.cfg, 1 if decode else self.P
        S = self.C if fixed_cache else None
        cache = (cfg.n_head, S, cfg.head_dim)
        specs = [tf.TensorSpec((T, cfg.n_embd), tf.float32, name="embeds"),
                 tf.TensorSpec((T,), tf.int32, name="position" if decode else "positions"),
                 tf.TensorSpec((T, None if S is None else S + T), tf.float32, name="mask"),
                 *[tf.TensorSpec(cache, tf.float32, name=f"k_{i}") for i in range(cfg.n_layer)],
                 *[tf.TensorSpec(cache, tf.float32, name=f"v_{i}") for i in range(cfg.n_layer)]]
        if not decode and not fixed_cache:
            specs.append(tf.TensorSpec((None,), tf.int32, name="rows"))
        return specs

    monkeypatch.setattr(gpt2_model, "attend", attend)
    monkeypatch.setattr(gpt2_model.GPT2TF, "input_signature", input_signature)


_BUILT: dict = {}


def gpt2_bundles(tmp_path_factory, quants=("fp32",)) -> Path:
    """A folder with the bundles of build_gpt2: $LITESHIP_TEST_BUNDLES if it has them, else built once per session."""
    given = os.environ.get("LITESHIP_TEST_BUNDLES")
    if given and all((Path(given) / f"gpt2-{q}").is_dir() for q in quants):
        return Path(given)
    root = _BUILT.get("root")
    if root is None:
        import pytest

        pytest.importorskip("tensorflow")
        pytest.importorskip("torch")
        root = _BUILT["root"] = tmp_path_factory.mktemp("gpt2-bundles")
        build_gpt2(root, quants=())
    for q in quants:
        if not (root / f"gpt2-{q}").is_dir():
            from liteship.convert.gpt2.export import export

            export(root / "gpt2-checkpoint", root / f"gpt2-{q}", quant=q, **BUNDLE_OPTIONS)
    return root


def make_trained_checkpoint(folder: Path, *, steps: int = 300, seed: int = 0):
    """A GPT-2 checkpoint folder trained here on Python's own documentation (pydoc_data.topics, as
    benchmarks/quality_gpt2.py does, at its --quick size): the weights a real fine-tune leaves, with a tokenizer
    trained on the same text. Returns (torch model, the token ids of a held-back sentence)."""
    import shutil

    import torch
    import transformers

    from liteship.runtime.tokenizer import ByteLevelBPETokenizer
    from tests.gpt2_tokenizer_fixture import make_tokenizer_files, pydoc_texts

    folder = Path(folder)
    texts = pydoc_texts()
    files = make_tokenizer_files(folder / "tokenizer", vocab_size=512, texts=texts[1:])
    tok = ByteLevelBPETokenizer.from_tokenizer_json(files["tokenizer_json"])
    stream = np.concatenate([np.asarray(tok.encode(t) + [tok.eos_token_id], np.int64) for t in texts[1:]])
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=64, n_positions=64, vocab_size=tok.vocab_size,
                                     bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = transformers.GPT2LMHeadModel(config)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    model.train()
    for _ in range(steps):
        starts = rng.integers(0, len(stream) - 64, size=8)
        batch = torch.from_numpy(np.stack([stream[s:s + 64] for s in starts]))  # (8, 64)
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    model.save_pretrained(folder)
    for role in ("vocab", "merges", "tokenizer_json"):
        shutil.copyfile(files[role], folder / files[role].name)
    held_back = tok.encode(texts[0])  # the first topic is not in the training text
    return model, held_back
