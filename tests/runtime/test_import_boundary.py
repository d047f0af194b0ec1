"""runtime/ must run on a board with numpy and an interpreter only: prove it in a fresh interpreter. The one place
that checks the import boundary of every runtime module (the tokenizer, the image path, generation, the CLIs)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import liteship.runtime

FORBIDDEN = ("tensorflow", "tf_keras", "keras", "transformers", "torch", "tensorflow_model_optimization")
# The runtime's tokenizer reproduces GPT-2's pre-tokenizer with stdlib re, without Hugging Face's packages.
TOKENIZER_FORBIDDEN = ("tokenizers", "regex")


def runtime_modules() -> list[str]:
    return sorted(f"liteship.runtime.{m.name}" for m in pkgutil.iter_modules(liteship.runtime.__path__))


def test_runtime_modules_do_not_import_heavy_frameworks():
    modules = runtime_modules()
    assert {"liteship.runtime.bundle", "liteship.runtime.tokenizer", "liteship.runtime.images", "liteship.runtime.classify",
            "liteship.runtime.image_cli", "liteship.runtime.generate", "liteship.runtime.text_cli"} <= set(modules)
    code = (
        "import sys, importlib\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "importlib.import_module('liteship.runtime.tokenizer').gpt2_pretokenizer_pattern()  # built on first use\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN + TOKENIZER_FORBIDDEN!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"importing liteship.runtime pulled in: {out}"


def test_running_a_bundle_does_not_import_them(fixture_bundles):
    code = (
        "import sys\n"
        "from liteship.runtime.bench import benchmark\n"
        f"benchmark({str(fixture_bundles / 'classifier-int8')!r}, runs=2, warmup=1)\n"
        f"print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out.splitlines()[-1:] in ([""], []), f"running a bundle pulled in: {out}"


def test_cli_help_does_not_load_tensorflow():
    code = (
        "import sys\nfrom liteship.cli import cli\n"
        "for args in (['--help'], ['convert', '--help'], ['run', '--help'], ['device', '--help']):\n"
        "    try:\n        cli.main(args=args, standalone_mode=False)\n    except SystemExit:\n        pass\n"
        f"print('LOADED:' + ','.join(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "LOADED:\n" in out or out.rstrip().endswith("LOADED:"), out[-500:]
