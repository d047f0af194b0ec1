"""The token table the runtime reads must be the checkpoint's wte, whatever the weights (a bug found: a uniform final
LayerNorm scale was folded by the converter into the tied LM head, so every input embedding arrived scaled)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from liteship.convert.gpt2.config import tiny
from tests.gpt2_fixtures import liteship_run, make_checkpoint, torch_greedy, torch_logits

pytest.importorskip("tensorflow")
torch = pytest.importorskip("torch")

PROMPT = [5, 77, 200, 13, 42, 256, 7, 99, 150, 3, 61, 290]
NEW_TOKENS = 32
OPTIONS = {"max_context": 64, "prefill_len": 8}
# The same bounds as test_gpt2_export's stated tolerances: fp32 to float32 summation order (1e-4), fp16 to
# 11-bit weights (1% of the largest logit), dynamic-int8 to int8 rounding (25% max, 6% rms of the logits' spread).
MAX_ERR = {"fp32": 1e-4, "fp16": 1e-2, "dynamic-int8": 0.25}


def uniform_final_scale(model):
    model.transformer.ln_f.weight.fill_(1.5)


def every_parameter_scaled(model):
    for p in model.parameters():
        p.mul_(1.25)


def checkpoint_with(tmp_path, change, cfg=None, **kwargs):
    model = make_checkpoint(tmp_path / "ckpt", cfg, trained_like=False, **kwargs)
    with torch.no_grad():
        change(model)
    model.save_pretrained(tmp_path / "ckpt")
    return model


def assert_matches_transformers(model, bundle, quant):
    want_tokens = torch_greedy(model, PROMPT, NEW_TOKENS)
    seq, got, tokens = liteship_run(bundle, PROMPT, NEW_TOKENS)
    want = torch_logits(model, PROMPT + tokens)[:-1]
    err = np.abs(got - want)
    assert err.max() <= MAX_ERR[quant] * (1 if quant == "fp32" else np.abs(want).max()), err.max()
    if quant == "fp32":
        assert tokens == want_tokens
    else:  # rounding may flip a near-tie; the continuation diverges from there, so compare the logits above
        assert np.sqrt((err ** 2).mean()) <= 0.06 * want.std()


@pytest.mark.parametrize("change", [uniform_final_scale, every_parameter_scaled])
@pytest.mark.parametrize("quant", ["fp32", "fp16", "dynamic-int8"])
def test_uniform_scales_keep_greedy_tokens_and_logits_equal_to_transformers(tmp_path, change, quant):
    from liteship.convert.gpt2.export import export

    model = checkpoint_with(tmp_path, change)
    export(tmp_path / "ckpt", tmp_path / "b", quant=quant, **OPTIONS)
    assert_matches_transformers(model, tmp_path / "b", quant)
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    # The graph leaves nothing for the converter to fold into the head, so the table is still stored only once.
    assert manifest["config"]["token_table"] == "lm_head"
    assert "token_table" not in manifest["assets"]


@pytest.mark.parametrize("quant", ["fp32", "dynamic-int8"])
def test_a_converter_rewrite_of_the_head_is_caught_and_the_bundle_gets_its_own_table(tmp_path, monkeypatch, quant):
    """The safety net: with the final LayerNorm written the plain way, TFLite folds its uniform scale into the LM
    head weight. Export must notice (reading the table back as the runtime does), ship a correct table of its own,
    and the bundle must still match transformers."""
    from liteship.convert.gpt2 import model as gpt2_model
    from liteship.convert.gpt2.export import export
    from liteship.convert.gpt2.token_table import mismatch
    from liteship.runtime.bundle import Bundle
    from liteship.runtime.token_table import TokenTable

    monkeypatch.setattr(gpt2_model.GPT2TF, "_final_layer_norm", lambda self, x: self._layer_norm(x, "ln_f"))
    model = checkpoint_with(tmp_path, uniform_final_scale)
    export(tmp_path / "ckpt", tmp_path / "b", quant=quant, **OPTIONS)

    b = Bundle.open(tmp_path / "b")
    wte = model.transformer.wte.weight.detach().numpy()
    head = TokenTable.from_model(b.model_path, *wte.shape)
    assert mismatch(head, wte) is not None, "the converter no longer folds this scale: the test needs a new trigger"
    assert b.config["token_table"] == "asset"
    assert b.asset("token_table").is_file() and (quant != "dynamic-int8" or b.asset("token_scales").is_file())
    assert mismatch(TokenTable.from_bundle(b), wte) is None
    assert_matches_transformers(model, tmp_path / "b", quant)


@pytest.mark.parametrize("dtype,tolerance", [(np.float32, 0.0), (np.float16, 2.0 ** -11), (np.int8, None)])
def test_mismatch_accepts_rounding_and_refuses_a_scaled_table(dtype, tolerance):
    from liteship.convert.gpt2.token_table import mismatch, own_copy
    from liteship.runtime.token_table import TokenTable

    rng = np.random.default_rng(0)
    wte = rng.normal(0, 0.3, (301, 36)).astype(np.float32)
    wte[7] = 0.0  # an all-zero row (an unused token) must not divide by zero
    # Rows of values half a step between two int8 levels, far from zero: rounding then moves each by the whole
    # allowed half step, and float32's own rounding of q * scale comes on top (a 124M table failed its own copy on
    # this before the check allowed for it).
    for row, top in zip(range(10, 42), rng.uniform(0.01, 2.0, 32).astype(np.float32)):
        wte[row, 0] = top
        wte[row, 1:] = (np.arange(127 - 35, 127) + 0.5).astype(np.float32) * (top / np.float32(127))
    import io

    def table_of(arrays):
        loaded = {role: np.load(io.BytesIO(data)) for role, (_, data) in arrays.items()}
        return TokenTable(loaded["token_table"], loaded.get("token_scales"))

    good = table_of(own_copy(wte, np.dtype(dtype)))
    assert good.table.dtype == dtype
    assert mismatch(good, wte) is None
    bad = table_of(own_copy(wte * 1.5, np.dtype(dtype)))
    assert "token row" in mismatch(bad, wte)
    one_row = wte.copy()
    one_row[123, 4] += 0.05  # one value off by more than any of these roundings
    assert "token row 123" in mismatch(table_of(own_copy(one_row, np.dtype(dtype))), wte)


def test_table_found_by_the_graph_when_other_weights_share_its_shape(tmp_path):
    """vocab = 3 x n_embd makes every c_attn weight [V, E] too (the runtime once looked the table up by its shape
    and refused such a model): the table is the LM head's weight, found by walking back from the logits."""
    from liteship.convert.gpt2.export import export
    from liteship.runtime.tflite_file import read_model

    cfg = tiny(n_embd=100, n_head=4)  # vocab 300 = 3 x 100
    model = make_checkpoint(tmp_path / "ckpt", cfg)
    export(tmp_path / "ckpt", tmp_path / "b", quant="fp32", **OPTIONS)
    same_shape = {t.buffer for sg in read_model(tmp_path / "b" / "model.tflite").subgraphs for t in sg.tensors
                  if t.shape == [300, 100]}
    assert len(same_shape) == 1 + cfg.n_layer, "the head and every c_attn weight share the [V, E] shape"
    ids = [5, 77, 100, 13, 42, 126, 7]
    seq, got, tokens = liteship_run(tmp_path / "b", ids, 8)
    np.testing.assert_allclose(got, torch_logits(model, seq)[:-1], atol=1e-4, rtol=0)


def test_odd_sizes_and_an_added_token_match_transformers(tmp_path):
    """n_head 3 with head size 12, a vocab that is no multiple of 8 and an added token, trained-like weights."""
    from liteship.convert.gpt2.export import export

    cfg = tiny(n_head=3, n_embd=36, vocab_size=301, bos_token_id=299, eos_token_id=299)
    model = make_checkpoint(tmp_path / "ckpt", cfg, added=["<|sep|>"])
    export(tmp_path / "ckpt", tmp_path / "b", quant="fp32", max_context=48, prefill_len=5)
    ids = [300, 5, 77, 200, 300, 13, 42, 256, 7]  # 300 is the added token's row
    seq, got, tokens = liteship_run(tmp_path / "b", ids, NEW_TOKENS)
    assert tokens == torch_greedy(model, ids, NEW_TOKENS)
    np.testing.assert_allclose(got, torch_logits(model, seq)[:-1], atol=1e-4, rtol=0)

