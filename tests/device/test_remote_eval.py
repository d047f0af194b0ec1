"""`liteship eval gpt2 --device`: the evaluation runs on the loopback SSH board from the pushed runtime zipapp and
gives what the host gives."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from liteship.device.remote_eval import eval_gpt2_on_device
from liteship.errors import DeviceError
from liteship.runtime.text_eval import evaluate_text
from tests.conftest_gpt2 import TRAINING_TEXT, gpt2_bundles


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return gpt2_bundles(tmp_path_factory, quants=("fp32", "dynamic-int8"))


def test_eval_on_the_ssh_board_equals_the_host(ssh_env, root, remote_python, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text(TRAINING_TEXT * 2)
    int8, fp32 = root / "gpt2-dynamic-int8", root / "gpt2-fp32"
    host = evaluate_text(int8, text, reference=fp32, threads=1)
    board = eval_gpt2_on_device("ssh:board", int8, text, reference=fp32, threads=1, python=remote_python,
                                workdir=str(tmp_path / "wd"))
    assert board["target"] == "ssh:board"
    assert board["bundle"].startswith(str(tmp_path / "wd" / "bundles"))  # it ran on the pushed copy
    assert board["perplexity"] == pytest.approx(host["perplexity"], rel=1e-9)  # same runtime, same numbers
    assert board["reference"]["top1_agreement"] == host["reference"]["top1_agreement"]
    assert board["reference"]["mean_kl"] == pytest.approx(host["reference"]["mean_kl"], rel=1e-6)
    assert board["windows"] == host["windows"] and board["tokens"] == host["tokens"]

    with pytest.raises(DeviceError, match="the reference must be a bundle"):
        eval_gpt2_on_device("ssh:board", int8, text, reference=root / "gpt2-checkpoint", python=remote_python)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(DeviceError, match="ssh:board: the evaluation failed: .*perplexity needs at least 2"):
        eval_gpt2_on_device("ssh:board", int8, empty, python=remote_python, workdir=str(tmp_path / "wd"))


def test_cli_device_option(ssh_env, root, remote_python, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text(TRAINING_TEXT)
    res = subprocess.run([sys.executable, "-c", "from liteship.cli import main; main()", "eval", "gpt2",
                          str(root / "gpt2-fp32"), str(text), "--device", "ssh:board", "--python", remote_python, "--json",
                          "--threads", "1"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["target"] == "ssh:board"
    assert doc["perplexity"] == pytest.approx(evaluate_text(root / "gpt2-fp32", text, threads=1)["perplexity"],
                                              rel=1e-9)
