"""--quant int4 for GPT-2: int4 weights with int8 activations quantized at run time (ai-edge-quantizer), and a token
table the runtime can still read."""

from __future__ import annotations

import numpy as np
import pytest

from tests.gpt2_fixtures import gpt2_bundles

pytest.importorskip("tensorflow")
pytest.importorskip("torch")
pytest.importorskip("ai_edge_quantizer")


def test_int4_weights_are_int4_and_the_token_table_is_wte_within_half_a_step(tmp_path_factory):
    import json

    from liteship.convert.gpt2.token_table import mismatch
    from liteship.runtime.bundle import Bundle
    from liteship.runtime.tflite_file import read_model
    from liteship.runtime.token_table import TokenTable

    root = gpt2_bundles(tmp_path_factory, quants=("int4",))
    b = Bundle.open(root / "gpt2-int4")
    assert b.quantization == "int4"
    model = read_model(b.model_path)
    weights = {sg.tensors[ins[1]].dtype for sg in model.subgraphs
               for code, ins in zip(sg.op_codes, sg.op_inputs) if model.operator_names[code] == "FULLY_CONNECTED"}
    assert weights == {"INT4"}, weights  # every matrix product of both signatures
    from safetensors.numpy import load_file

    wte = load_file(root / "gpt2-checkpoint" / "model.safetensors")["transformer.wte.weight"]
    table = TokenTable.from_bundle(b)
    assert mismatch(table, wte) is None
    if b.config["token_table"] == "lm_head":
        assert table.dtype == "int4"
    manifest = json.loads((b.root / "manifest.json").read_text())
    assert manifest["conversion"]["op_counts"]["FULLY_CONNECTED"] >= 2


def test_int4_rows_unpack_like_the_kernel(tmp_path):
    """Two values per byte, the first in the low nibble, two's complement: checked on a hand-packed table."""
    from liteship.runtime.token_table import TokenTable

    values = np.array([[-8, 7, 0, -1, 3], [1, -2, -8, 5, 6], [0, 0, 7, -7, 2]], np.int8)  # odd width: rows straddle
    flat = (values.reshape(-1) & 0xF).astype(np.uint8)
    flat = np.append(flat, 0)
    packed = (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8)
    table = TokenTable(packed, np.array([1.0, 0.5, 2.0], np.float32), shape=(3, 5))
    out = np.zeros((3, 5), np.float32)
    table.rows(np.array([2, 0, 1]), out)
    np.testing.assert_array_equal(out, values[[2, 0, 1]] * np.array([[2.0], [1.0], [0.5]], np.float32))
