"""The BT vs GPM grid of docs/results.md: every head on one frozen backbone, several seeds, scored on the
held-out HH-RLHF pairs and on RM-Bench, from cached backbone features.

    python docs/results_grid.py run recipes/minilm_hh_gpm.yaml --seeds 42 43 44 -o docs/results/minilm.jsonl
    python docs/results_grid.py table docs/results/minilm.jsonl docs/results/smollm2.jsonl
    python docs/results_grid.py plot docs/results/*.jsonl -o docs/results_grid.png

`run` trains, for each seed, BT and the GPM at dims 2/4/6/8 with and without gate and L2 (17 heads),
each one `train_reward_model` (the `gpmctl train-rm` frozen-backbone path: log.jsonl and
metrics.json per run under runs/results/, no model folder), then scores RM-Bench from the backbone
features of its responses (computed once per backbone and cached like the training features; same
rows, encoding and 3x3 scoring as `gpmctl eval rmbench --limit N`). The seed moves the held-out split
(by prompt), the head's initialisation and the batch order. One JSON line per run. `table` prints
the markdown table of mean +- standard deviation over seeds; `plot` draws it as bars.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from gpmctl.config import load_recipe
from gpmctl.data.tokenize import SequenceEncoder
from gpmctl.errors import ModelError
from gpmctl.eval import rmbench as rm
from gpmctl.eval.benchmarks import rmbench_tables
from gpmctl.eval.examples import assistant, user
from gpmctl.models.model import Hidden
from gpmctl.models.sources import load_tokenizer
from gpmctl.train.features import cached_features
from gpmctl.train.reward import load_pairs, train_reward_model

HEADS = [("bt", ["model.kind=bt", "model.gate=false"])] + [
    (
        f"gpm{dim}{'-gate' if gate else ''}{'-l2' if l2 else ''}",
        ["model.kind=gpm", f"model.dim={dim}", f"model.gate={str(gate).lower()}", f"model.l2={str(l2).lower()}"],
    )
    for dim in (2, 4, 6, 8)
    for gate in (False, True)
    for l2 in (False, True)
]


def rmbench_sequences(recipe, tokenizer, head):
    """RM-Bench rows (first `evaluate.rmbench_limit` of each file) as 6 encoded sequences per row, chosen first."""
    e = recipe.evaluate
    encoder = SequenceEncoder(tokenizer, e.max_length or recipe.data.max_length, head.eos, head.gate_prompt, "right")
    tables = rmbench_tables([e.rmbench], e.rmbench_limit)
    seqs = [
        encoder.encode(user(r["prompt"]), assistant(t)) for _, rows in tables for r in rows for t in r["chosen"] + r["rejected"]
    ]
    return tables, seqs


@torch.no_grad()
def rmbench_from_features(model, tables, features) -> dict:
    """RM-Bench hard / normal / easy per domain from the 6 responses' features of every row."""
    out = model(hidden=Hidden(features.read, features.prompt))
    n = len(features.read) // 6
    value = out.value.double().view(n, 6, *out.value.shape[1:])
    gate = model.head.prompt_gate(None if out.gate is None else out.gate.double().view(n, 6, -1))
    S = model.head.score_matrix(value, gate)[:, :3, 3:]
    examples, row = [], 0
    for path, rows in tables:
        for number, r in enumerate(rows, start=1):
            scores = S[row].tolist()
            examples.append({"domain": rm.row_domain(path, number, r), "matrix": rm.row_matrix(lambda a, b: scores[a][b])})
            row += 1
    result = rm.aggregate(examples)
    return {
        "overall": result["overall"],
        "hard": result["hard"],
        "normal": result["normal"],
        "easy": result["easy"],
        "domains": {d: s["average"] for d, s in result["domains"].items()},
        "rows": len(examples),
    }


def run_grid(recipe_path: str, seeds: list[int], out: Path, overrides: list[str], heads: list[str] | None = None) -> None:
    """Every head (or those named in `heads`) for every seed; (head, seed) runs already in `out` are
    skipped, so an interrupted grid continues where it stopped."""
    name = Path(recipe_path).stem.replace("_gpm", "").replace("_bt", "")
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {(r["head"], r["seed"]) for r in map(json.loads, out.read_text().splitlines())} if out.is_file() else set()
    base = load_recipe(recipe_path, overrides)
    tokenizer = load_tokenizer(base.model.tokenizer or base.model.backbone)
    m = base.model  # token rules shared by every head: one tokenisation per seed (the split depends on it)
    encoder = SequenceEncoder(tokenizer, base.data.max_length, m.resolved_eos(), m.gate_prompt, base.data.truncation)
    tables, seqs = rmbench_sequences(base, tokenizer, m)
    with open(out, "a", encoding="utf-8") as f:
        for seed in seeds:
            pairs = None
            for label, head in HEADS:
                if (label, seed) in done or (heads and label not in heads):
                    continue
                recipe = load_recipe(
                    recipe_path, [*overrides, *head, f"train.seed={seed}", f"output_dir=runs/results/{name}/{label}-s{seed}"]
                )
                pairs = pairs or load_pairs(recipe, encoder)
                try:
                    run = train_reward_model(recipe, overwrite=True, save=False, pairs=pairs)
                except ModelError as e:  # e.g. a gate on an encoder backbone
                    print(f"{name} {label} seed {seed}: skipped: {e}", file=sys.stderr)
                    continue
                started = time.perf_counter()
                features = cached_features(run.model, seqs, tokenizer.pad_token_id)
                bench = rmbench_from_features(run.model, tables, features)
                timing = run.timing | {
                    "rmbench_features_s": round(features.seconds, 2),
                    "rmbench_cached": features.cached,
                    "rmbench_total_s": round(time.perf_counter() - started, 2),
                }
                record = {
                    "backbone": recipe.model.backbone,
                    "head": label,
                    "seed": seed,
                    "heldout": run.final_metrics,
                    "rmbench": bench,
                    "timing": timing,
                }
                f.write(json.dumps(record) + "\n")
                f.flush()
                print(
                    f"{name} {label} seed {seed}: held-out {run.final_metrics['accuracy']:.4f}, RM-Bench {bench['overall']:.4f}",
                    file=sys.stderr,
                )


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.1f} ± {100 * sd:.1f}"


def print_table(paths: list[str]) -> None:
    records = [json.loads(line) for p in paths for line in Path(p).read_text().splitlines() if line.strip()]
    columns = ["held-out acc", "RM-Bench", "hard", "normal", "easy", "chat", "code", "safety", "head train s"]
    print("| backbone | head | seeds | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 3) + "|")
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        groups.setdefault((r["backbone"], r["head"]), []).append(r)
    order = [label for label, _ in HEADS]
    backbones = list(dict.fromkeys(backbone for backbone, _ in groups))
    for (backbone, head), rs in sorted(groups.items(), key=lambda g: (backbones.index(g[0][0]), order.index(g[0][1]))):
        cells = [_mean_sd([r["heldout"]["accuracy"] for r in rs])]
        cells += [_mean_sd([r["rmbench"][k] for r in rs]) for k in ("overall", "hard", "normal", "easy")]
        cells += [_mean_sd([r["rmbench"]["domains"][d] for r in rs]) for d in ("chat", "code", "safety")]
        cells.append(f"{statistics.mean(r['timing']['training_s'] for r in rs):.1f}")
        print(f"| {backbone.removeprefix('package:')} | {head} | {len(rs)} | " + " | ".join(cells) + " |")


def plot_grid(paths: list[str], out: Path) -> None:
    """Bars of held-out accuracy and RM-Bench overall per head (mean over seeds, error bar: standard
    deviation), one row of panels per backbone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for p in paths for line in Path(p).read_text().splitlines() if line.strip()]
    backbones = list(dict.fromkeys(r["backbone"] for r in records))
    heads = [label for label, _ in HEADS if any(r["head"] == label for r in records)]
    fig, axes = plt.subplots(len(backbones), 2, figsize=(14, 3.4 * len(backbones)), squeeze=False)
    for row, backbone in enumerate(backbones):
        present = [h for h in heads if any(r["backbone"] == backbone and r["head"] == h for r in records)]  # no gate on encoders
        for col, (metric, title) in enumerate(
            [
                (lambda r: r["heldout"]["accuracy"], "held-out HH-RLHF pair accuracy"),
                (lambda r: r["rmbench"]["overall"], "RM-Bench overall (subsample)"),
            ]
        ):
            values = [[metric(r) for r in records if r["backbone"] == backbone and r["head"] == h] for h in present]
            means = [statistics.mean(v) for v in values]
            sds = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]
            ax = axes[row][col]
            ax.bar(
                range(len(present)),
                means,
                yerr=sds,
                capsize=2,
                color=["tab:orange" if h == "bt" else "tab:blue" for h in present],
            )
            ax.axhline(means[present.index("bt")], color="tab:orange", lw=0.8, ls="--")
            ax.axhline(0.5, color="grey", lw=0.5)
            ax.set_xticks(range(len(present)), present, rotation=60, ha="right", fontsize=8)
            ax.set(title=f"{backbone.removeprefix('package:')}: {title}", ylim=(0.3, 0.8))
            ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train and score every head for every seed")
    run.add_argument("recipe")
    run.add_argument("overrides", nargs="*", help="key.path=value applied to every run")
    run.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    run.add_argument("-o", "--out", type=Path, required=True, help="jsonl file (appended)")
    run.add_argument("--heads", nargs="+", help=f"only these heads (default all: {', '.join(label for label, _ in HEADS)})")
    table = sub.add_parser("table", help="the markdown table of one or more grid files")
    table.add_argument("files", nargs="+")
    plot = sub.add_parser("plot", help="bar charts of one or more grid files (PNG)")
    plot.add_argument("files", nargs="+")
    plot.add_argument("-o", "--out", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "run":
        run_grid(args.recipe, args.seeds, args.out, args.overrides, args.heads)
    elif args.command == "table":
        print_table(args.files)
    else:
        plot_grid(args.files, args.out)


if __name__ == "__main__":
    main()
