"""Long steps show progress: on a terminal the stage's line counts its seconds (and counted work its rate and
ETA); in a log a line per stage. Every converter ends with the same summary line: where, size, mode, time,
peak RSS. Each runs the real CLI."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import threading

import pytest

from tests.cli.harness import cli_env, command, run

SUMMARY = re.compile(r"^\[liteship\] wrote (?P<out>.+): (?P<size>\d+\.\d+) (?P<unit>kB|MB) model, "
                     r"(?P<quant>fp32|fp16|dynamic-int8|int8|int8x16|int4), \d+\.\d s, peak RSS \d+\.\d MiB$")


def run_on_a_terminal(args, tmp_path, timeout: float = 300):
    """Runs the CLI with stderr on a pseudo-terminal (stdout a pipe); returns (exit code, stdout, terminal text)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(command(*args), stdout=subprocess.PIPE, stderr=slave, env=cli_env(tmp_path),
                            cwd=tmp_path)
    os.close(slave)
    chunks = []

    def drain():
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the last writer closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain)
    reader.start()
    out = proc.communicate(timeout=timeout)[0]
    reader.join(timeout=10)
    os.close(master)
    return proc.returncode, out.decode(), b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")


def converters(fx, tmp_path):
    from tests.convert.bit_fixtures import write_bit_npz

    write_bit_npz(tmp_path / "bit.npz")
    return {
        "savedmodel": ["convert", "savedmodel", fx / "classifier-savedmodel", "--quant", "int8",
                       "--calibration", fx / "classifier-calibration.npy", "-o", tmp_path / "sm"],
        "gpt2": ["convert", "gpt2", fx / "gpt2-checkpoint", "--max-context", "16", "-o", tmp_path / "g"],
        "bit": ["convert", "bit", tmp_path / "bit.npz", "--variant", "tiny", "--image-size", "32",
                "--quant", "dynamic-int8", "-o", tmp_path / "b"],
    }


@pytest.mark.parametrize("name", ["savedmodel", "gpt2", "bit"])
def test_every_converter_ends_with_the_same_summary_line(name, fixture_bundles, tmp_path):
    args = converters(fixture_bundles, tmp_path)[name]
    result = run(args, tmp_path)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("[liteship] ")]
    match = SUMMARY.match(lines[-1])
    assert match, lines[-1]
    out = args[-1]
    assert match["out"] == str(out) and result.stdout.strip() == str(out)
    size = (out / "model.tflite").stat().st_size
    assert float(match["size"]) == pytest.approx(size / (1e3 if match["unit"] == "kB" else 1e6), abs=0.051)
    assert match["quant"] == (args[args.index("--quant") + 1] if "--quant" in args else "fp32")
    assert len(lines) >= 3, lines  # a line per stage before it, in a log


def test_on_a_terminal_stages_count_seconds_and_calibration_its_rate(fixture_bundles, tmp_path):
    code, out, text = run_on_a_terminal(converters(fixture_bundles, tmp_path)["savedmodel"], tmp_path)
    assert code == 0, text
    assert out.strip() == str(tmp_path / "sm")
    draws = text.split("\r\033[K")
    # calibration: count of the 64 samples, a rate, and an ETA while it runs or the time it took at the end
    calibrating = [d for d in draws if d.startswith("[liteship] calibrating ")]
    assert calibrating and calibrating[-1].startswith("[liteship] calibrating 64/64 samples, "), calibrating
    assert re.search(r"\d+\.\d/s, \d+\.\d s\n", calibrating[-1]), calibrating[-1]
    # a stage line ends with the time it took, on its own line
    assert re.search(r"^\[liteship\] converting .+ \(\d+\.\d s\)$", text, re.M), text
    assert SUMMARY.match([line for line in text.splitlines() if line.strip()][-1].split("\033[K")[-1])


def test_a_failure_on_a_terminal_ends_the_stage_line_first(tmp_path):
    """The error line must be a line of its own, not glued to a stage line still being redrawn (nor lost: the
    stage's stream is closed once the command is over)."""
    (tmp_path / "m.keras").write_text("not a Keras file")
    code, _, text = run_on_a_terminal(["convert", "keras", tmp_path / "m.keras", "-o", tmp_path / "o"], tmp_path)
    assert code == 1, text
    assert "Traceback" not in text, text
    lines = [line.split("\033[K")[-1] for line in text.splitlines() if line.strip()]
    assert re.fullmatch(r"\[liteship\] loading .*m\.keras \(\d+\.\d s\)", lines[-2]), lines
    assert lines[-1].startswith("error: ") and "m.keras" in lines[-1], lines
