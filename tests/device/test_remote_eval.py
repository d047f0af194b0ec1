"""`liteship eval gpt2|bit --device`: the evaluation runs on the loopback SSH board from the pushed runtime zipapp
and gives what the host gives (the board runs this venv's interpreter: same kernels, so the same numbers)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from liteship.device.remote_eval import eval_on_device, folder_archive
from liteship.errors import DeviceError
from liteship.runtime.classify import evaluate
from liteship.runtime.text_eval import evaluate_text
from tests.gpt2_fixtures import TRAINING_TEXT, gpt2_bundles


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return gpt2_bundles(tmp_path_factory, quants=("fp32", "dynamic-int8"))


def test_gpt2_on_the_ssh_board_equals_the_host(ssh_env, root, remote_python, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text(TRAINING_TEXT * 2)
    int8, fp32 = root / "gpt2-dynamic-int8", root / "gpt2-fp32"
    host = evaluate_text(int8, text, reference=fp32, threads=1)
    board = eval_on_device("ssh:board", "gpt2", int8, text, reference=fp32, threads=1, python=remote_python,
                           workdir=str(tmp_path / "wd"))
    assert board["target"] == "ssh:board"
    assert board["bundle"].startswith(str(tmp_path / "wd" / "bundles"))  # it ran on the pushed copy
    assert board["perplexity"] == pytest.approx(host["perplexity"], rel=1e-9)
    assert board["reference"]["top1_agreement"] == host["reference"]["top1_agreement"]
    assert board["reference"]["mean_kl"] == pytest.approx(host["reference"]["mean_kl"], rel=1e-6)
    assert board["windows"] == host["windows"] and board["tokens"] == host["tokens"]

    with pytest.raises(DeviceError, match="the reference must be a bundle"):
        eval_on_device("ssh:board", "gpt2", int8, text, reference=root / "gpt2-checkpoint", python=remote_python)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(DeviceError, match="ssh:board: the evaluation failed: .*perplexity needs at least 2"):
        eval_on_device("ssh:board", "gpt2", int8, empty, python=remote_python, workdir=str(tmp_path / "wd"))


def test_cli_gpt2_device_option(ssh_env, root, remote_python, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text(TRAINING_TEXT)
    res = subprocess.run([sys.executable, "-c", "from liteship.cli import main; main()", "eval", "gpt2",
                          str(root / "gpt2-fp32"), str(text), "--device", "ssh:board", "--python", remote_python,
                          "--json", "--threads", "1"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["target"] == "ssh:board"
    assert doc["perplexity"] == pytest.approx(evaluate_text(root / "gpt2-fp32", text, threads=1)["perplexity"],
                                              rel=1e-9)


def test_classifier_images_go_to_the_board_as_one_archive(ssh_env, fixture_bundles, remote_python, tmp_path):
    from PIL import Image

    labeled = tmp_path / "labeled"
    rng = np.random.default_rng(5)
    for i in range(15):
        (labeled / "abcde"[i % 5]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(labeled / "abcde"[i % 5] / f"{i}.png")
    (labeled / "a" / "notes.txt").write_text("not an image")  # skipped there as here
    int8, fp32 = fixture_bundles / "classifier-int8", fixture_bundles / "classifier-fp32"
    host = evaluate(int8, labeled, reference_bundle=fp32, threads=1)
    res = subprocess.run([sys.executable, "-c", "from liteship.cli import main; main()", "eval", "bit", str(int8),
                          str(labeled), "--reference", str(fp32), "--device", "ssh:board", "--python", remote_python,
                          "--json", "--threads", "1"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    board = json.loads(res.stdout)
    assert board["target"] == "ssh:board" and board["images"] == host["images"] == 15
    assert board["accuracy"] == host["accuracy"] and board["correct"] == host["correct"]
    assert board["reference"]["top1_agreement"] == host["reference"]["top1_agreement"]
    assert [s["reason"].split(": ")[-1] for s in board["skipped"]] == [s["reason"].split(": ")[-1]
                                                                      for s in host["skipped"]]
    # The archive is named by its content: the same folder gives the same bytes, a changed one other bytes.
    first = folder_archive(labeled)
    assert folder_archive(labeled) == first
    shutil.copy(labeled / "a" / "0.png", labeled / "b" / "0.png")
    assert folder_archive(labeled) != first
