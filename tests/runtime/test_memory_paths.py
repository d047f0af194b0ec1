"""What keeps a GPT-2 session's resident memory down (docs/gpt2_kv_cache.md, "Memory"): token rows read without
mapping the model, and the model file's pages given back once the compiled engine runs on its weight cache."""

from __future__ import annotations

import mmap
import os
import sys

import numpy as np
import pytest

from liteship.runtime.token_table import TokenTable
from tests.gpt2_fixtures import gpt2_bundles

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self")


def mapped(path) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/maps") as maps:
        return any(line.rstrip("\n").endswith(" " + target) for line in maps)


def resident_bytes(path) -> int:
    """Resident bytes of this process's mappings of ``path`` (/proc/self/smaps)."""
    target, total, inside = os.path.realpath(path), 0, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split()
            if head and "-" in head[0] and len(head) >= 5 and all(c in "0123456789abcdef-" for c in head[0]):
                inside = len(head) == 6 and head[5] == target
            elif inside and line.startswith("Rss:"):
                total += int(head[1]) * 1024
    return total


@linux_only
@pytest.mark.parametrize("quant", ["dynamic-int8", "int4"])
def test_token_rows_come_from_the_model_without_mapping_it(tmp_path_factory, quant):
    """The rows are the LM head's, exactly as read from the model's bytes in memory; and the model file is not
    memory-mapped for them (a map paged in most of the table: the kernel maps up to 64 KiB around every row)."""
    from liteship.runtime.bundle import Bundle

    bundle = Bundle.open(gpt2_bundles(tmp_path_factory, quants=(quant,)) / f"gpt2-{quant}")
    if bundle.config.get("token_table", "lm_head") != "lm_head":
        pytest.skip("this bundle carries its own table")
    table = TokenTable.from_bundle(bundle)
    V, E = table.shape
    ids = np.array([0, 1, V // 2, V - 1, 7, 7, 3])
    got, want = np.zeros((len(ids), E), np.float32), np.zeros((len(ids), E), np.float32)
    table.rows(ids, got)
    TokenTable.from_model(bundle.model_path.read_bytes(), V, E).rows(ids, want)
    np.testing.assert_array_equal(got, want)
    assert np.abs(got).max() > 0
    assert not mapped(bundle.model_path)


@linux_only
@pytest.mark.parametrize("dtype", [np.int8, np.float16, np.float32])
def test_a_table_asset_is_read_by_rows_equal_to_the_array(tmp_path, dtype):
    rng = np.random.default_rng(0)
    values = (rng.integers(-127, 128, (37, 12)) if dtype == np.int8 else rng.normal(size=(37, 12))).astype(dtype)
    np.save(tmp_path / "t.npy", values)
    scales = None
    if dtype == np.int8:
        scales = tmp_path / "s.npy"
        np.save(scales, rng.uniform(0.01, 0.1, 37).astype(np.float32))
    table = TokenTable.from_files(tmp_path / "t.npy", scales)
    ids = np.array([36, 0, 5, 5])
    got = np.zeros((4, 12), np.float32)
    table.rows(ids, got)
    want = values[ids].astype(np.float32)
    if scales is not None:
        want *= np.load(scales)[ids][:, None]
    np.testing.assert_array_equal(got, want)
    assert not mapped(tmp_path / "t.npy")


@linux_only
def test_dropping_a_files_pages_frees_them_and_keeps_the_data(tmp_path):
    from liteship.runtime.interpreter import drop_resident_pages

    path = tmp_path / "weights.bin"
    data = np.random.default_rng(0).integers(0, 255, 8 << 20, dtype=np.uint8)
    path.write_bytes(data.tobytes())
    with open(path, "rb") as fh:
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    view = np.frombuffer(mm, np.uint8)
    assert int(view[::4096].sum()) >= 0  # touch every page
    assert resident_bytes(path) >= 7 << 20
    assert drop_resident_pages(path) >= 8 << 20
    assert resident_bytes(path) <= 1 << 20
    np.testing.assert_array_equal(view, data)  # read again: the pages come back from the file
    del view
    mm.close()


@linux_only
def test_the_compiled_engine_keeps_no_model_pages_resident(tmp_path_factory, tmp_path, monkeypatch):
    """With the weight cache, the model's own weights are not needed after compilation: the session holds
    (almost) none of the model file resident, and its logits are still PyTorch's."""
    from liteship.runtime.generate import KVCacheSession
    from liteship.runtime.interpreter import compiled_model_available

    if not compiled_model_available():
        pytest.skip("needs ai-edge-litert 2.x (CompiledModel)")
    monkeypatch.setenv("LITESHIP_CACHE", str(tmp_path / "cache"))
    root = gpt2_bundles(tmp_path_factory, quants=("fp32",))
    s = KVCacheSession(root / "gpt2-fp32", engine="compiled")
    assert s.weight_cache is not None
    assert resident_bytes(s.bundle.model_path) == 0
    ref = np.load(root / "gpt2.reference.npz")
    got = s.prefill(list(ref["prompt"]))
    np.testing.assert_allclose(got, ref["logits"][:len(ref["prompt"])], atol=1e-4, rtol=0)
