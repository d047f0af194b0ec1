"""runtime/backend_private.py is the one door to the interpreter backends' private APIs: nothing else in the
repository touches a private name of their Interpreter, SignatureRunner, CompiledModel, TensorBuffer or Environment,
or LiteRT's C library; and a private name a backend no longer has fails in one line naming the backend, or falls
back where a public path serves."""

from __future__ import annotations

import ast
import ctypes
import ctypes.util
import importlib.util
from pathlib import Path

import numpy as np
import pytest

import liteship.runtime.backend_private as bp
from liteship.errors import RuntimeLiteshipError
from liteship.runtime.interpreter import available_backends, create_interpreter

THIS = Path(__file__).resolve()
DOOR = "backend_private.py"
# The backends' source files whose classes' private names are checked: the Interpreter wrapper (the same file in
# each backend) and LiteRT's CompiledModel API.
BACKEND_FILES = {"ai_edge_litert": ("interpreter.py", "compiled_model.py", "tensor_buffer.py", "environment.py"),
                 "tflite_runtime": ("interpreter.py",), "tensorflow": ("lite/python/interpreter.py",)}
# The names backend_private.py reaches, so that the check holds where no backend source can be read.
KNOWN = {"_interpreter", "_subgraph_index", "_get_ops_details", "_get_full_signature_list", "_get_tensor_details",
         "_signature_defs", "_capsule", "_model"}
GETTERS = {"getattr", "hasattr", "setattr", "delattr"}


def backend_private_names() -> set[str]:
    """Every single-underscore name the installed backends' classes define or set on ``self``."""
    names = set(KNOWN)
    for package, files in BACKEND_FILES.items():
        spec = importlib.util.find_spec(package)  # without importing it (TensorFlow would take seconds)
        if spec is None or not spec.submodule_search_locations:
            continue
        root = Path(list(spec.submodule_search_locations)[0])
        for name in files:
            if not (root / name).is_file():
                continue
            for node in ast.walk(ast.parse((root / name).read_text())):
                if isinstance(node, ast.ClassDef):
                    for item in ast.walk(node):
                        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                            names.add(item.name)
                        elif isinstance(item, ast.Attribute) and isinstance(item.value, ast.Name) \
                                and item.value.id == "self":
                            names.add(item.attr)
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def private_accesses(source: str, names: set[str]) -> list[str]:
    """Where ``source`` reaches one of ``names`` on an object other than its own ``self``/``cls`` (attribute or
    getattr-family call), or LiteRT's C library: "line: what" each."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr in names \
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
            found.append(f"{node.lineno}: .{node.attr}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in GETTERS \
                and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and node.args[1].value in names:
            found.append(f"{node.lineno}: {node.func.id}(..., {node.args[1].value!r})")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "libLiteRt" in node.value:
            found.append(f"{node.lineno}: LiteRT's C library")
    return found


def checked_files() -> list[Path]:
    """liteship as installed (every stage's package), this test tree, and the repository's benchmarks and tools
    where the tests run from a checkout."""
    folders = []
    for package in ("liteship", "liteship.runtime", "liteship.convert", "liteship.device", "liteship.android_bench"):
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.submodule_search_locations:
            folders.extend(Path(p) for p in spec.submodule_search_locations)
    tests = THIS.parents[1]
    folders += [tests] + [tests.parent / extra for extra in ("benchmarks", "tools") if (tests.parent / extra).is_dir()]
    files = {p.resolve() for folder in folders for p in folder.rglob("*.py")}
    return sorted(p for p in files if p.name != DOOR and p != THIS)  # THIS holds examples of what is refused


def test_the_check_finds_each_kind_of_private_access():
    names = backend_private_names()
    assert {"_interpreter", "_subgraph_index", "_get_ops_details"} <= names
    bad = ("interp._interpreter.Invoke(3)\n"
           "n = runner._subgraph_index\n"
           "ops = getattr(interp, '_get_ops_details')()\n"
           "lib = ctypes.CDLL(folder + '/libLiteRt.so')\n")
    assert sorted(f.split(":")[0] for f in private_accesses(bad, names)) == ["1", "2", "3", "4"]
    fine = ("class A:\n    def __init__(self, interp):\n        self._interpreter = interp\n"
            "details = runner.get_input_details()\nsession.prefill([1])\n")
    assert private_accesses(fine, names) == []


def test_nothing_outside_the_door_touches_a_backend_private_name():
    names = backend_private_names()
    files = checked_files()
    assert any(p.name == "generate.py" for p in files) and any(p.name == "xnnpack_coverage.py" for p in files)
    found = [f"{p}:{hit}" for p in files for hit in private_accesses(p.read_text(), names)]
    assert found == [], "private backend API used outside runtime/backend_private.py:\n" + "\n".join(found)


@pytest.fixture
def classifier(fixture_bundles):
    return fixture_bundles / "classifier-fp32" / "model.tflite"


def test_a_signature_subgraph_is_driven_through_the_door(classifier):
    """Views into the signature's own tensors: what is written into the input is what the model reads, and the
    output equals the public runner's (which copies)."""
    interp = create_interpreter(classifier, num_threads=1)
    runner = interp.get_signature_runner()
    (name, detail), = runner.get_input_details().items()
    x = np.random.default_rng(0).random([2, *detail["shape"][1:]], np.float32)
    want = runner(**{name: x})
    sub = bp.SignatureSubgraph(interp, runner)
    sub.resize_input(detail["index"], x.shape)
    sub.allocate()
    sub.view(detail["index"])[:] = x
    sub.invoke()
    for out, d in runner.get_output_details().items():
        np.testing.assert_array_equal(sub.view(d["index"]), want[out])


@pytest.mark.parametrize("owner, name", [("runner", "_subgraph_index"), ("interp", "_interpreter")])
def test_a_missing_private_name_is_one_line_naming_the_backend(classifier, monkeypatch, owner, name):
    interp = create_interpreter(classifier, num_threads=1)
    runner = interp.get_signature_runner()
    monkeypatch.delattr(runner if owner == "runner" else interp, name)  # as a release that renamed it would be
    with pytest.raises(RuntimeLiteshipError) as caught:
        bp.SignatureSubgraph(interp, runner)
    message = str(caught.value)
    assert message.startswith(f"{interp.liteship_backend}: its interpreter has no ") and name in message
    assert all(f"{name} {version}" in message for name, version in bp.CHECKED_ON.items()) and "\n" not in message


def test_generation_without_the_private_subgraph_index_fails_in_one_line(fixture_bundles, monkeypatch):
    """GPT-2's interpreter engine has no public path to fall back on: the session refuses in one line."""
    from liteship.runtime.generate import KVCacheSession

    runner_class = type(create_interpreter(fixture_bundles / "gpt2-fp32" / "model.tflite").get_signature_runner(
        "decode"))
    real_init = runner_class.__init__

    def renamed(self, *args, **kwargs):  # a release whose runner keeps its subgraph under another name
        real_init(self, *args, **kwargs)
        del self._subgraph_index

    monkeypatch.setattr(runner_class, "__init__", renamed)
    with pytest.raises(RuntimeLiteshipError, match=r"^\S+ \S+: its interpreter has no signature runner "
                                                   r"_subgraph_index, a private API"):
        KVCacheSession(fixture_bundles / "gpt2-fp32", engine="interpreter")


def test_ops_details_lists_the_models_nodes_or_fails_in_one_line(classifier, monkeypatch):
    """The model's own nodes as the flatbuffer holds them, plus a DELEGATE node per partition where XNNPACK is
    applied by default (not by tflite-runtime 2.14 on armv7l)."""
    import collections

    from liteship.runtime.tflite_file import read_model

    interp = create_interpreter(classifier, num_threads=1, use_xnnpack=True)
    interp.allocate_tensors()
    ops = bp.ops_details(interp)
    assert {"index", "op_name", "inputs", "outputs"} <= set(ops[0])
    assert collections.Counter(op["op_name"] for op in ops if op["op_name"] != "DELEGATE") \
        == read_model(classifier).op_counts()
    monkeypatch.delattr(type(interp), "_get_ops_details")
    with pytest.raises(RuntimeLiteshipError, match=r"its interpreter has no _get_ops_details\(\)"):
        bp.ops_details(interp)


@pytest.mark.skipif("litert" not in available_backends(), reason="needs ai-edge-litert (its libLiteRt.so)")
def test_without_the_c_symbol_the_compiled_engine_gives_way_to_the_interpreter(fixture_bundles, monkeypatch):
    """A libLiteRt.so without LiteRtCreateTensorBufferFromHostMemory (here: the C library stands in for it): no host buffers, so auto generation takes the interpreter engine and still answers; asking for the
    compiled engine, or a buffer, is a one-line error."""
    from liteship.runtime.generate import KVCacheSession
    from liteship.runtime.interpreter import compiled_model_available

    real_cdll, libc = ctypes.CDLL, ctypes.util.find_library("c")
    monkeypatch.setattr(ctypes, "CDLL", lambda path, *a, **k: real_cdll(libc))
    bp._litert_c.cache_clear()
    try:
        assert not bp.host_buffers_available() and not compiled_model_available()
        session = KVCacheSession(fixture_bundles / "gpt2-fp32")
        assert session.engine == "interpreter" and session.prefill([1, 2, 3]).shape == (3, 300)
        with pytest.raises(RuntimeLiteshipError, match="the compiled engine needs ai-edge-litert 2.x"):
            KVCacheSession(fixture_bundles / "gpt2-fp32", engine="compiled")
        with pytest.raises(RuntimeLiteshipError, match=r"^ai-edge-litert \S+: its libLiteRt.so has no "
                                                       "LiteRtCreateTensorBufferFromHostMemory"):
            bp.HostTensorBuffer(np.zeros(16, np.float32))
    finally:
        monkeypatch.undo()
        bp._litert_c.cache_clear()
