"""Regenerates runtime/_schema_names.py from the schema that ai-edge-litert ships.

A developer tool: it lives outside the runtime package so the device zipapp does not carry it.
Run from the repository root: python tools/gen_schema_names.py
"""

from pathlib import Path

OUTPUT = Path(__file__).resolve().parents[1] / "runtime" / "_schema_names.py"

NUMPY_NAMES = {
    "FLOAT32": "float32", "FLOAT16": "float16", "INT32": "int32", "UINT8": "uint8", "INT64": "int64",
    "STRING": "object", "BOOL": "bool", "INT16": "int16", "COMPLEX64": "complex64", "INT8": "int8",
    "FLOAT64": "float64", "COMPLEX128": "complex128", "UINT64": "uint64", "UINT32": "uint32", "UINT16": "uint16",
}


def main() -> None:
    from ai_edge_litert import schema_py_generated as schema

    ops = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    types = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    lines = [
        '"""Enum names from the TensorFlow Lite flatbuffer schema (schema.fbs), so that reading a .tflite needs no',
        'TensorFlow. Regenerate with: python tools/gen_schema_names.py (needs ai-edge-litert)."""',
        "",
        "BUILTIN_OPERATORS = {",
        *(f'    {k}: "{ops[k]}",' for k in sorted(ops)),
        "}",
        "",
        '# TensorType -> numpy dtype name ("" where numpy has none).',
        "TENSOR_TYPES = {",
        *(f'    {k}: ("{types[k]}", "{NUMPY_NAMES.get(types[k], "")}"),' for k in sorted(types)),
        "}",
    ]
    OUTPUT.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
