"""Bundle -> answers, with numpy and a TFLite interpreter only (no TensorFlow, transformers or torch).

The public entry points are importable from here; each loads its module on first use, so importing
``liteship.runtime`` stays cheap on a board.
"""

_EXPORTS = {
    "Bundle": "liteship.runtime.bundle",
    "TextGenerator": "liteship.runtime.generate",
    "ImageClassifier": "liteship.runtime.classify",
    "ByteLevelBPETokenizer": "liteship.runtime.tokenizer",
    "benchmark": "liteship.runtime.bench",
    "create_interpreter": "liteship.runtime.interpreter",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'liteship.runtime' has no attribute {name!r}")
