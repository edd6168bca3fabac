"""Speed and memory of bcnb's fast path, side by side; writes benchmarks/results.md.

    .venv/bin/python benchmarks/speed.py            # 224x224, batch 64 (as bcnb bench)
    .venv/bin/python benchmarks/speed.py 128 32     # a quicker look

See bcnb/bench.py for what each line measures. The raw figures go to results.json.
"""

import json
import sys
from pathlib import Path

from bcnb.bench import render, run_all

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    img_size, batch_size = (int(sys.argv[1]), int(sys.argv[2])) if len(sys.argv) == 3 else (224, 64)
    results = run_all(
        img_size, batch_size, progress=lambda message: print(message, file=sys.stderr, flush=True)
    )
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    text = render(results, img_size, batch_size)
    print(text)
    (HERE / "results.md").write_text("# bcnb bench\n\n" + text)
