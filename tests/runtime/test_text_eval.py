"""`liteship eval gpt2`: perplexity over a text in windows of the bundle's context, checked against PyTorch's
(transformers GPT2LMHeadModel on the same tiny checkpoint, the same windows), and agreement with a reference."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from liteship.runtime.text_eval import evaluate_text, windows
from tests.gpt2_fixtures import TRAINING_TEXT, gpt2_bundles

# The text spans several 64-token windows of the test bundles (prefill chunks of 8), so the cache carries over
# eight chunks per window and windows restart it.
TEXT = TRAINING_TEXT + "a dog and a fox are not the same thing, but both like the sun. " * 4


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return gpt2_bundles(tmp_path_factory)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "held_out.txt"
    path.write_text(TEXT)
    return path


def test_windows_predict_every_token_after_the_first_once():
    for n, c in ((2, 64), (64, 64), (65, 64), (200, 64), (1000, 7)):
        spans = windows(n, c)
        predicted = [t for s, e in spans for t in range(s + 1, e)]
        assert predicted == list(range(1, n)), (n, c)
        assert all(e - s <= c for s, e in spans)
    assert windows(1, 64) == []


def torch_perplexity(root, ids, context) -> float:
    """The reference computation, independent of liteship: PyTorch logits per window, no cache."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = transformers.GPT2LMHeadModel.from_pretrained(root / "gpt2-checkpoint").eval()
    nll, count = 0.0, 0
    for start, end in windows(len(ids), context):
        window = torch.tensor([ids[start:end]])
        with torch.no_grad():
            logp = torch.log_softmax(model(window).logits[0, :-1].double(), dim=-1)
        nll -= float(logp[torch.arange(end - start - 1), window[0, 1:]].sum())
        count += end - start - 1
    return math.exp(nll / count)


def test_perplexity_equals_pytorch(root, text_file):
    result = evaluate_text(root / "gpt2-fp32", text_file, threads=1)
    from liteship.runtime.tokenizer import ByteLevelBPETokenizer

    ids = ByteLevelBPETokenizer.from_bundle(root / "gpt2-fp32").encode(TEXT)
    assert result["tokens"] == len(ids) and result["windows"] >= 3 and result["context"] == 64
    assert result["predicted"] == len(ids) - 1
    want = torch_perplexity(root, ids, 64)
    # fp32 TFLite vs PyTorch: logits agree to ~1e-4 (the export test's tolerance), so perplexity to 1e-4 relative.
    assert result["perplexity"] == pytest.approx(want, rel=1e-4)
    # A random-weight model is far from uniform over its 300 tokens, so this is not a trivial value.
    assert abs(math.log(result["perplexity"]) - math.log(300)) > 0.1


def test_reference_bundle_and_checkpoint(root, text_file, tmp_path_factory):
    same = evaluate_text(root / "gpt2-fp32", text_file, reference=root / "gpt2-fp32", threads=1)["reference"]
    assert same["top1_agreement"] == 1.0 and same["mean_kl"] == pytest.approx(0.0, abs=1e-9)
    assert same["perplexity_change_pct"] == pytest.approx(0.0, abs=1e-9)

    pytest.importorskip("tensorflow")
    ckpt = evaluate_text(root / "gpt2-fp32", text_file, reference=root / "gpt2-checkpoint", threads=1)
    ref = ckpt["reference"]
    assert ref["source"].endswith("(checkpoint)")
    assert ref["perplexity"] == pytest.approx(ckpt["perplexity"], rel=1e-4)  # fp32 conversion changes nothing
    assert ref["top1_agreement"] > 0.99 and ref["mean_kl"] < 1e-5

    int8 = gpt2_bundles(tmp_path_factory, quants=("dynamic-int8",)) / "gpt2-dynamic-int8"
    q = evaluate_text(int8, text_file, reference=root / "gpt2-fp32", threads=1)
    # int8 weights move the distributions: a KL above fp32's rounding, yet mostly the same greedy choices.
    assert 1e-6 < q["reference"]["mean_kl"] < 0.5
    assert 0.5 < q["reference"]["top1_agreement"] <= 1.0
    assert q["reference"]["perplexity"] == pytest.approx(ckpt["perplexity"], rel=1e-9)


def test_cli_json_and_errors(root, text_file, tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-c", "from liteship.cli import main; main()", *args],
                              capture_output=True, text=True)

    res = run("eval", "gpt2", str(root / "gpt2-fp32"), str(text_file), "--json", "--threads", "1")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    api = evaluate_text(root / "gpt2-fp32", text_file, threads=1)
    assert doc["perplexity"] == pytest.approx(api["perplexity"], rel=1e-12)
    assert "evaluating" in res.stderr  # the progress bar

    empty = tmp_path / "one.txt"
    empty.write_text("x")
    res = run("eval", "gpt2", str(root / "gpt2-fp32"), str(empty))
    assert res.returncode == 1 and res.stderr.strip().splitlines() == [
        f"error: {empty}: 1 token(s); perplexity needs at least 2"]  # checked before any interpreter starts
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00abc")
    res = run("eval", "gpt2", str(root / "gpt2-fp32"), str(binary))
    assert res.returncode == 1 and res.stderr.startswith(f"error: {binary}: not UTF-8")
    assert "Traceback" not in res.stderr
    res = run("eval", "gpt2", str(root / "gpt2-fp32"), str(text_file), "--reference", str(tmp_path))
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith(f"error: reference {tmp_path}: neither a bundle nor")


def test_bundle_reference_imports_no_framework(root, text_file):
    code = ("import sys\nfrom liteship.runtime.text_eval import evaluate_text\n"
            f"evaluate_text({str(root / 'gpt2-fp32')!r}, {str(text_file)!r}, reference={str(root / 'gpt2-fp32')!r})\n"
            "print([m for m in ('tensorflow', 'torch', 'transformers') if m in sys.modules])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
