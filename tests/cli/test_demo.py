"""`liteship demo` trains its models, so it needs the workstation extras: without them it says which, in one line."""

from __future__ import annotations

import subprocess
import sys

HIDE = "import sys\nsys.modules['sklearn'] = sys.modules['torch'] = None  # as if scikit-learn and torch were absent\n"


def run_hidden(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", HIDE + code], capture_output=True, text=True, timeout=120)


def test_demo_without_the_extras_names_what_is_missing(tmp_path):
    workdir = tmp_path / "demo"
    proc = run_hidden(f"from liteship.cli import main\nmain(['demo', '--workdir', {str(workdir)!r}])\n")
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        'error: liteship demo needs scikit-learn, torch, which are not installed: pip install "liteship[convert,dev]"']
    assert not workdir.exists()


def test_each_part_asks_only_for_what_it_uses():
    proc = run_hidden("import liteship.demo as d\nprint([d.missing_distributions([p]) for p in d.PARTS])\n")
    assert proc.stdout.strip() == "[['scikit-learn'], ['torch'], []]", proc.stderr
