"""Throughput and memory of `gpmctl data convert`: a synthetic jsonl of --rows rows (default
1,000,000) to canonical jsonl and to parquet, each in a fresh subprocess so peak RSS is its own.

    python bench/data_convert.py              # 1,000,000 rows
    python bench/data_convert.py --rows 2000  # a few seconds

Prints, per target: rows, seconds, rows/s and the peak resident memory of the converting process.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Run in a child: convert, then report the child's own peak RSS (ru_maxrss is KiB on Linux).
CHILD = """
import json, resource, sys, time
from gpmctl.data.ops import convert
t = time.perf_counter()
result = convert(sys.argv[1], sys.argv[2])
seconds = time.perf_counter() - t
print(json.dumps({"rows": result["rows"], "seconds": seconds,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

WORDS = "the a model answer prompt reward helpful harmless preference cycle token data pair better worse".split()


def synthetic_jsonl(path: Path, rows: int, seed: int = 0) -> None:
    """Rows of the explicit format, with a few of them multi-turn and some extra keys."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(rows):
            text = lambda n: " ".join(rng.choices(WORDS, k=n))  # noqa: E731
            prompt = text(rng.randint(5, 40))
            if i % 10 == 0:
                prompt = [
                    {"role": "user", "content": prompt},
                    {"role": "assistant", "content": text(8)},
                    {"role": "user", "content": text(6)},
                ]
            row = {
                "prompt": prompt,
                "chosen": text(rng.randint(10, 80)),
                "rejected": text(rng.randint(10, 80)),
                "id": i,
                "subset": "synthetic",
                "margin": rng.random(),
            }
            f.write(json.dumps(row) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the synthetic input")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gpmctl-bench-") as tmp:
        src = Path(tmp) / "input.jsonl"
        t = time.perf_counter()
        synthetic_jsonl(src, args.rows)
        size_mib = src.stat().st_size / 2**20
        print(f"input: {args.rows:,} rows, {size_mib:,.1f} MiB jsonl (generated in {time.perf_counter() - t:.1f} s)")
        baseline = _child_rss_baseline()
        print(f"baseline: peak RSS of a child that only imports gpmctl.data.ops: {baseline:,.0f} MiB")
        for target in ("output.jsonl", "output.parquet"):
            dst = Path(tmp) / target
            env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
            out = subprocess.run(
                [sys.executable, "-c", CHILD, str(src), str(dst)], capture_output=True, text=True, env=env, check=True
            )
            r = json.loads(out.stdout)
            print(
                f"convert -> {target.split('.', 1)[1]:8s} {r['rows']:>10,} rows  {r['seconds']:7.2f} s  "
                f"{r['rows'] / r['seconds']:>10,.0f} rows/s  peak RSS {r['peak_rss_mib']:,.0f} MiB  "
                f"output {dst.stat().st_size / 2**20:,.1f} MiB"
            )


def _child_rss_baseline() -> float:
    code = "import resource, pyarrow.parquet, gpmctl.data.ops; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


if __name__ == "__main__":
    main()
