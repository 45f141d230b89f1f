"""CLI start-up: `gpmctl --help` wall time, and how soon `gpmctl score` prints its first result.

    python bench/startup.py [--repeats 5] [--lines 512]

`gpmctl score` is timed from process start to its first stdout line, on the default tiny model
(built from config and saved), two files of `--lines` lines. Its bound is a process that does only
the necessary work: start Python, import, load the model and tokenizer, score one batch (32
sequences = 16 lines) and print. `score` writes a chunk of `--chunk-lines` lines at a time (default
256), so it is timed with the default and with `--chunk-lines 16` (one batch). Medians of `--repeats`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
GPMCTL = [shutil.which("gpmctl") or sys.executable, *([] if shutil.which("gpmctl") else ["-m", "gpmctl"])]
ONE_BATCH_LINES = 16  # score's default batch is 32 sequences: 16 lines of 2 files


def first_line_seconds(cmd: list[str]) -> float:
    """Seconds from starting `cmd` to its first stdout line (the process then runs to its end)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    proc.stdout.readline()
    seconds = time.perf_counter() - start
    proc.communicate()
    if proc.returncode:
        sys.exit(f"failed: {' '.join(cmd)}")
    return seconds


def reference(model: str, a: str, b: str) -> None:
    """The bound: load the model, score one batch with gpmctl's own functions, print it."""
    from gpmctl.cli.score import score_lines
    from gpmctl.data.responses import aligned_rows
    from gpmctl.models.embed import load_scorer

    scorer = load_scorer(model, 2 * ONE_BATCH_LINES, 2048, "auto", "cpu")
    rows = []
    for item in aligned_rows([a, b]):
        rows.append(item)
        if len(rows) == ONE_BATCH_LINES:
            break
    print(json.dumps(score_lines(scorer, rows)[0]), flush=True)


def setup(workdir: Path, lines: int) -> tuple[Path, Path, Path]:
    from gpmctl.config import ModelConfig
    from gpmctl.models.build import build_model
    from gpmctl.models.io import save_model
    from gpmctl.models.sources import load_tokenizer

    model = workdir / "tiny_gpm"
    if not (model / "preference_head.json").exists():
        tok = load_tokenizer("tiny")
        save_model(build_model(ModelConfig(gate=True), tok, seed=0), model, tok)
    files = []
    for side in ("a", "b"):
        path = workdir / f"{side}.jsonl"
        path.write_text(
            "".join(
                json.dumps({"prompt": f"question {i} about rocks", "response": f"answer {side} {i} is paper"}) + "\n"
                for i in range(lines)
            )
        )
        files.append(path)
    return model, files[0], files[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--lines", type=int, default=512)
    ap.add_argument("--workdir", default="/tmp/gpmctl_bench_startup")
    ap.add_argument("--reference", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.reference:
        return reference(*args.reference)

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    model, a, b = setup(workdir, args.lines)
    score = [*GPMCTL, "score", str(a), str(b), "--model", str(model)]
    cases = {
        "gpmctl --help": [*GPMCTL, "--help"],
        "bound: python + import + load + one batch": [sys.executable, __file__, "--reference", str(model), str(a), str(b)],
        "gpmctl score, first line (--chunk-lines 16)": [*score, "--chunk-lines", str(ONE_BATCH_LINES)],
        "gpmctl score, first line (default --chunk-lines 256)": score,
    }
    print(
        f"# start-up: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, median of {args.repeats}, "
        f"load avg {os.getloadavg()[0]:.2f}, {args.lines} lines x 2 files, tiny GPM (gate)\n"
    )
    print("| what | seconds (median) | min |\n|---|---:|---:|")
    for name, cmd in cases.items():
        times = [first_line_seconds(cmd) for _ in range(args.repeats)]
        print(f"| {name} | {statistics.median(times):.3f} | {min(times):.3f} |", flush=True)
    print(f"\n(load avg after: {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()
