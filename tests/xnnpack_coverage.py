"""Which ops of a .tflite the XNNPACK delegate takes: a measurement for tests and benchmarks (docs/bit_groupnorm.md),
not part of the product."""

from __future__ import annotations

from pathlib import Path


def xnnpack_coverage(tflite_path: str | Path) -> dict:
    """Which ops of a .tflite the XNNPACK delegate takes, as LiteRT actually partitions it here.

    After allocate_tensors the interpreter lists the model's original nodes plus one DELEGATE node per partition
    (LiteRT keeps the replaced nodes in the node table but not in the execution plan). A node still runs on its
    own iff one of its outputs reaches a model output or a partition's input without leaving a partition, so we
    walk back from those tensors. Returns {"nodes", "delegated", "partitions", "undelegated": {op: count},
    "undelegated_shapes": {op: sorted output shapes}} (the shapes say what a node left out of the delegate costs:
    one of a fixed size, or one that grows with the model's width or the image).
    """
    import collections

    from liteship.runtime.backend_private import ops_details
    from liteship.runtime.interpreter import create_interpreter

    interpreter = create_interpreter(tflite_path, use_xnnpack=True)
    interpreter.allocate_tensors()
    ops = ops_details(interpreter)  # no public API lists the execution plan
    partitions = [op for op in ops if op["op_name"] == "DELEGATE"]
    originals = [op for op in ops if op["op_name"] != "DELEGATE"]
    partition_outputs = {t for op in partitions for t in op["outputs"]}
    needed = {t for op in partitions for t in op["inputs"]} | {d["index"] for d in interpreter.get_output_details()}
    undelegated: set[int] = set()
    changed = True
    while changed:
        changed = False
        for op in originals:
            if op["index"] in undelegated:
                continue
            if any(t in needed and t not in partition_outputs for t in op["outputs"]):
                undelegated.add(op["index"])
                needed.update(op["inputs"])
                changed = True
    counts = collections.Counter(op["op_name"] for op in originals if op["index"] in undelegated)
    shapes = {detail["index"]: tuple(int(d) for d in detail["shape"]) for detail in interpreter.get_tensor_details()}
    left = collections.defaultdict(set)
    for op in originals:
        if op["index"] in undelegated:
            left[op["op_name"]].update(shapes.get(t, ()) for t in op["outputs"])
    return {"nodes": len(originals), "delegated": len(originals) - len(undelegated),
            "partitions": len(partitions), "undelegated": dict(sorted(counts.items())),
            "undelegated_shapes": {name: sorted(value) for name, value in sorted(left.items())}}
