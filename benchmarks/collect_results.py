"""Assembles benchmarks/RESULTS.md from the tables each benchmark wrote to benchmarks/results/*.md.

Each section keeps the machine, date and command its benchmark recorded; run a benchmark again and then this to
refresh RESULTS.md."""

from __future__ import annotations

import re
from pathlib import Path

from liteship.runtime.files import write_atomic

HERE = Path(__file__).parent
ORDER = ["gpt2_speed", "gpt2_quality", "bit_speed", "bit_accuracy"]
INTRO = """# liteship benchmark results

Measured by the scripts in this folder; each section says the machine, the date and how it was run. Tests check
correctness; the speed, size, memory and accuracy targets are checked here, as ratios measured side
by side in one run. Refresh a section by running its script, then `python benchmarks/collect_results.py`.
"""


def main() -> None:
    parts = [INTRO]
    names = sorted(p.stem for p in (HERE / "results").glob("*.md"))
    for name in sorted(names, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n)):
        text = (HERE / "results" / f"{name}.md").read_text().strip()
        parts.append(re.sub(r"^(#+) ", r"#\1 ", text, flags=re.MULTILINE))  # each file's headings one level down
    out = HERE / "RESULTS.md"
    write_atomic(out, "\n\n".join(parts) + "\n")


if __name__ == "__main__":
    main()
