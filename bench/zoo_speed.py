"""The field's pretrained models as lbdl runs them, against their publishers' own code
(issue 26): for each converted model, inference throughput of lbdl and of the publisher's
model on the same input in the same run, their ratio (goal >= 1.0) and the largest
difference of their outputs. Weights are random here (nothing can be downloaded); the
conversions are the same for the published weights. Each app's bench/zoo_<app>.py measures
its models; this script gathers them.

    python bench/zoo_speed.py           # writes bench/results/zoo_speed.json
    python bench/zoo_speed.py --quick   # a check that it runs, prints only
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import environment, write_result

APPS = ("classify", "segment", "detect", "clip", "dqn", "diffusion")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a check that it runs")
    parser.add_argument("--only", nargs="*", help="apps to measure (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows: list[dict[str, Any]] = []
    for app in args.only or APPS:
        try:
            module = importlib.import_module(f"zoo_{app}")
        except ModuleNotFoundError:
            continue
        for row in module.measure(args.quick):
            rows.append({"app": app, **row})
            print(f"{row['name']}: ours {row['ours_per_s']:.3g}/s, theirs "
                  f"{row['theirs_per_s']:.3g}/s, ratio {row['ratio']:.2f}, "
                  f"max diff {row['max_abs_diff']:.2g}", flush=True)  # fmt: skip
    if not args.quick:
        ratios = [row["ratio"] for row in rows]
        result = {
            "benchmark": "zoo_speed",
            "models": rows,
            "min_ratio": min(ratios) if ratios else None,
            "goal_ratio": 1.0,
            "weights": "random (the publishers' architectures, converted)",
            **environment(),
        }
        print(f"wrote {write_result('zoo_speed', result)}")


if __name__ == "__main__":
    main()
