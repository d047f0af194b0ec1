"""What `liteship eval gpt2|bit --device` runs on the device: ``python3 liteship-runtime.pyz eval gpt2|bit BUNDLE
DATA [--reference BUNDLE]`` prints the evaluation as one JSON line (runtime/text_eval.py, runtime/classify.py)."""

from __future__ import annotations

import argparse
import json
import sys

from liteship.errors import LiteshipError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="liteship-eval", description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=("gpt2", "bit"))
    parser.add_argument("bundle")
    parser.add_argument("data", help="gpt2: a UTF-8 text file; bit: a folder of class folders")
    parser.add_argument("--reference", default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--backend", default="auto")
    args = parser.parse_args(argv)
    try:
        if args.kind == "gpt2":
            from liteship.runtime.text_eval import evaluate_text

            result = evaluate_text(args.bundle, args.data, reference=args.reference, threads=args.threads,
                                   backend=args.backend)
        else:
            from liteship.runtime.classify import evaluate

            result = evaluate(args.bundle, args.data, reference_bundle=args.reference, threads=args.threads,
                              backend=args.backend)
    except LiteshipError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
