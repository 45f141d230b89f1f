"""BT vs GPM vs the hybrid head on a frozen backbone, under one protocol that is fair to every head
(docs/results.md). Every head is trained from cached backbone features, so a whole grid costs one
feature extraction per backbone and seconds per run.

    python docs/results_grid.py run recipes/minilm_hh_gpm.yaml -o docs/results/grid_minilm.jsonl
    python docs/results_grid.py run recipes/smollm2_135m_hh_gpm.yaml model.eos=template -o docs/results/grid_smollm2.jsonl
    python docs/results_grid.py table docs/results/grid_*.jsonl
    python docs/results_grid.py plot docs/results/grid_*.jsonl -o docs/results_grid.png

The protocol, per backbone:
  - Data: every pair of the recipe's `data.train` (`data.max_samples` is ignored; HH-RLHF harmless-base:
    2,312 pairs) and every row of RM-Bench (`evaluate.rmbench`, all 798 rows, every domain). One token rule
    for every head (the recipe's), so every head reads the same features.
  - Per seed: `data.eval_fraction` of the prompts held out as the test set; of the other prompts, the same
    fraction again held out as the validation set (splits by prompt, seeded by the seed).
  - Per head and seed: the same budget of TRIALS hyper-parameter settings (the same settings for every head:
    trial 0 is the recipe's lr with no weight decay and the head's default tau, the others are drawn once
    from a fixed generator: lr, weight decay, tau). Each trial trains up to `train.epochs` epochs,
    evaluates the validation set after each epoch and keeps the best epoch (early stopping). The trial with
    the best validation (accuracy, then loss) is the head's model for that seed; only it is scored on the
    test pairs and on RM-Bench. Nothing is chosen on the test set or RM-Bench.
  - The seed moves the splits, the head's initialisation and the batch order. Paired tests against BT
    use the same seed's split: a paired t-test over seeds, and an exact McNemar test over the test pairs
    of every seed pooled.

A run is `train_head`: gpmctl's own head (PreferenceModel on `hidden=` features), step (`pair_step`),
optimiser and schedule (`optimisation`), loop (`fit`) and evaluation (`evaluate`) as `gpmctl train-rm`
runs them on cached features, with the backbone loaded once instead of once per run
(tests/test_results_grid.py checks it gives train-rm's numbers). One JSON line per (head, seed);
(head, seed) lines already in the output file are skipped, so an interrupted grid continues.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from gpmctl.config import load_recipe
from gpmctl.data.batches import epoch_batches
from gpmctl.data.formats import ReadOptions
from gpmctl.data.sources import read_source
from gpmctl.data.split import held_out
from gpmctl.data.tokenize import SequenceEncoder
from gpmctl.engine import Engine
from gpmctl.eval import rmbench as rm
from gpmctl.eval.benchmarks import rmbench_tables
from gpmctl.eval.examples import assistant, user
from gpmctl.models.build import build_model
from gpmctl.models.heads import HeadConfig
from gpmctl.models.model import Hidden, PreferenceModel
from gpmctl.models.sources import load_tokenizer
from gpmctl.train.features import FeaturePairs, Features, cached_features, one_thread
from gpmctl.train.loop import Evaluation, best_key, fit
from gpmctl.train.reward import evaluate, optimisation, pair_forward, pair_step


def _gpm(dim: int, gate: bool, l2: bool, kind: str = "gpm") -> tuple[str, list[str]]:
    label = f"{'hyb' if kind == 'gpm_bt' else 'gpm'}{dim}{'-gate' if gate else ''}{'-l2' if l2 else ''}"
    return label, [f"model.kind={kind}", f"model.dim={dim}", f"model.gate={str(gate).lower()}", f"model.l2={str(l2).lower()}"]


HEADS = dict(
    [("bt", ["model.kind=bt", "model.gate=false"])]
    + [_gpm(dim, gate, l2) for dim in (2, 4, 6, 8) for gate in (False, True) for l2 in (False, True)]
    + [_gpm(dim, gate, False, "gpm_bt") for dim in (2, 8) for gate in (False, True)]
)
"""Head label -> model overrides. `gpmD`: GPM of dimension D; `hybD`: BT scalar + GPM blocks of dimension D
(model.kind gpm_bt); `-gate`: prompt-dependent eigenvalue gate (decoders only); `-l2`: unit-norm embeddings."""

TRIALS = 8
"""Hyper-parameter settings tried per head and seed (the same settings for every head)."""


@dataclass(frozen=True)
class Trial:
    lr: float
    weight_decay: float
    tau: float | None  # None: the head's default (GPM 0.1, BT 1)

    def overrides(self) -> list[str]:
        return [f"train.lr={self.lr:.3g}", f"train.weight_decay={self.weight_decay}"] + (
            [f"model.tau={self.tau}"] if self.tau is not None else []
        )


def trials(count: int, base_lr: float) -> list[Trial]:
    """Trial 0: the recipe's lr, no weight decay, the head's default tau; then settings drawn once from a
    fixed generator (lr log-uniform 1e-4 to 1e-2, weight decay 0 / 0.01 / 0.1, tau 0.03 / 0.1 / 0.3 / 1)."""
    rng = random.Random(19)
    drawn = [
        Trial(10 ** rng.uniform(-4, -2), rng.choice([0.0, 0.01, 0.1]), rng.choice([0.03, 0.1, 0.3, 1.0]))
        for _ in range(count - 1)
    ]
    return [Trial(base_lr, 0.0, None), *drawn]


# ----------------------------------------------------------------------------------------------------
# Data: every pair, encoded once; splits per seed


@dataclass
class Data:
    """Every pair of the recipe's data, its backbone features, and RM-Bench's rows and features."""

    records: list[dict]
    chosen: Features
    rejected: Features
    encoded: list  # the EncodedPair of every record (its margin, label, meta)
    rmbench_tables: list
    rmbench: Features

    def pairs(self, index: list[int]) -> FeaturePairs:
        return FeaturePairs(self.chosen.rows(index), self.rejected.rows(index), [self.encoded[i] for i in index])

    def split(self, fraction: float, seed: int) -> tuple[list[int], list[int], list[int]]:
        """(train, validation, test) record indices: test = `fraction` of the prompts, validation = `fraction`
        of the rest, by prompt."""
        test = [held_out(r, fraction, seed) for r in self.records]
        val = [not t and held_out(r, fraction, seed + 1000) for r, t in zip(self.records, test)]
        train = [i for i in range(len(test)) if not (test[i] or val[i])]
        return train, [i for i, v in enumerate(val) if v], [i for i, t in enumerate(test) if t]


def load_data(recipe, backbone_model: PreferenceModel, tokenizer) -> Data:
    d, m, e = recipe.data, recipe.model, recipe.evaluate
    encoder = SequenceEncoder(tokenizer, d.max_length, m.resolved_eos(), m.gate_prompt, d.truncation)
    options = ReadOptions(allow_empty_responses=d.allow_empty_responses, keys=d.input_keys())
    records = list(read_source(d.train, options=options))
    encoded = [encoder.encode_pair(r, f"{d.train}:{i + 1}", False, False) for i, r in enumerate(records)]
    pad = tokenizer.pad_token_id
    features = cached_features(backbone_model, [p.chosen for p in encoded] + [p.rejected for p in encoded], pad)
    n = len(encoded)
    tables = rmbench_tables([e.rmbench])  # every row
    rm_encoder = SequenceEncoder(tokenizer, e.max_length or d.max_length, m.resolved_eos(), m.gate_prompt, "right")
    rm_seqs = [
        rm_encoder.encode(user(r["prompt"]), assistant(t))
        for _, rows in tables
        for r in rows
        for t in r["chosen"] + r["rejected"]
    ]
    rm_features = cached_features(backbone_model, rm_seqs, pad)
    return Data(records, features.rows(list(range(n))), features.rows(list(range(n, 2 * n))), encoded, tables, rm_features)


# ----------------------------------------------------------------------------------------------------
# One run: a head trained on features, early-stopped on the validation set


def train_head(recipe, backbone: torch.nn.Module, train: FeaturePairs, val: FeaturePairs, val_pairs: list) -> tuple:
    """gpmctl train-rm's frozen-backbone run of `recipe` on these features, keeping the best validation
    epoch -> (model, best {"step", "metrics"})."""
    m, t = recipe.model, recipe.train
    torch.manual_seed(t.seed)
    with torch.random.fork_rng():  # as gpmctl.models.build.build_model initialises the head
        torch.manual_seed(t.seed + 1)
        model = PreferenceModel(backbone, HeadConfig.from_model_config(m), init_std=m.init_std)
    engine = Engine.local()
    tau = m.resolved_tau()

    def batches(epoch: int) -> list[list[int]]:
        return epoch_batches(len(train), t.batch_size, t.seed, epoch)

    steps_per_epoch, total_steps, optimizer, scheduler = optimisation(model, t, len(batches(0)), len(train))
    best_weights = {}

    def save_best() -> None:
        best_weights.update({k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad})

    def run_eval() -> dict:
        return evaluate(engine, model, val, t.batch_size * 2, tau, [p.meta for p in val_pairs], [p.label for p in val_pairs])

    state = {"step": 0, "epoch": 0, "micro_batch": 0, "best": None}
    step = lambda index: pair_step(model, train.batch(index), tau, t.use_margin, t.center_rewards_coefficient)  # noqa: E731
    every_epoch = Evaluation(run_eval, steps_per_epoch, True, save_best)
    loop = dict(batches=batches, step=step, state=state, total_steps=total_steps, max_grad_norm=t.max_grad_norm)
    fit(engine, model, optimizer, scheduler, **loop, evaluation=every_epoch, logging_steps=total_steps + 1, report=lambda w: None)
    model.load_state_dict(best_weights, strict=False)
    return model, state["best"]


@torch.no_grad()
def test_scores(model: PreferenceModel, pairs: FeaturePairs, tau: float) -> torch.Tensor:
    """s(chosen > rejected) of every test pair."""
    model.eval()
    return torch.cat(
        [
            pair_forward(model, pairs.batch(list(range(s, min(s + 256, len(pairs))))), tau, False)[1]
            for s in range(0, len(pairs), 256)
        ]
    )


@torch.no_grad()
def rmbench_from_features(model: PreferenceModel, tables, features: Features) -> dict:
    """RM-Bench hard / normal / easy per domain from the 6 responses' features of every row (the scoring of
    `gpmctl eval rmbench`: gpmctl.eval.rmbench)."""
    model.eval()
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
    return {k: result[k] for k in ("overall", "hard", "normal", "easy")} | {
        "domains": {d: s["average"] for d, s in result["domains"].items()},
        "rows": len(examples),
    }


# ----------------------------------------------------------------------------------------------------
# The grid


def run_grid(recipe_path: str, seeds: list[int], out: Path, overrides: list[str], heads: list[str], count: int) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {(r["head"], r["seed"]) for r in map(json.loads, out.read_text().splitlines())} if out.is_file() else set()
    base = load_recipe(recipe_path, overrides)
    tokenizer = load_tokenizer(base.model.tokenizer or base.model.backbone)
    # The backbone, loaded once; a BT head on it is only the handle that computes and caches the features.
    first = load_recipe(recipe_path, [*overrides, *HEADS["bt"]])
    backbone_model = build_model(first.model, tokenizer, first.train.seed)
    backbone = backbone_model.backbone
    data = load_data(base, backbone_model, tokenizer)
    settings = trials(count, base.train.lr)
    decoder = any(getattr(module, "is_causal", False) for module in backbone.modules())
    chosen = [h for h in heads if decoder or "-gate" not in h]  # a gate needs a causal decoder
    with open(out, "a", encoding="utf-8") as f, one_thread():
        for seed in seeds:
            train_idx, val_idx, test_idx = data.split(base.data.eval_fraction, seed)
            train, val, test = data.pairs(train_idx), data.pairs(val_idx), data.pairs(test_idx)
            val_pairs = [data.encoded[i] for i in val_idx]
            for label in chosen:
                if (label, seed) in done:
                    continue
                started = time.perf_counter()
                runs = []
                for number, trial in enumerate(settings):
                    recipe = load_recipe(recipe_path, [*overrides, *HEADS[label], *trial.overrides(), f"train.seed={seed}"])
                    model, best = train_head(recipe, backbone, train, val, val_pairs)
                    runs.append((best_key(best["metrics"]), number, recipe, model, best))
                key, number, recipe, model, best = max(runs, key=lambda r: r[0])
                scores = test_scores(model, test, recipe.model.resolved_tau())
                record = {
                    "backbone": base.model.backbone,
                    "head": label,
                    "seed": seed,
                    "pairs": {"train": len(train_idx), "validation": len(val_idx), "test": len(test_idx)},
                    "trial": number,
                    "settings": {
                        "lr": recipe.train.lr,
                        "weight_decay": recipe.train.weight_decay,
                        "tau": recipe.model.resolved_tau(),
                    },
                    "best_step": best["step"],
                    "steps_per_epoch": math.ceil(len(train_idx) / recipe.train.batch_size),
                    "validation": {"accuracy": best["metrics"]["accuracy"], "loss": best["metrics"]["loss"]},
                    "trials_validation_accuracy": [r[4]["metrics"]["accuracy"] for r in runs],
                    "test": {
                        "accuracy": float((scores > 0).double().mean()),
                        "correct": "".join("1" if s > 0 else "0" for s in scores),
                    },
                    "rmbench": rmbench_from_features(model, data.rmbench_tables, data.rmbench),
                    "seconds": round(time.perf_counter() - started, 2),
                }
                f.write(json.dumps(record) + "\n")
                f.flush()
                print(
                    f"{Path(recipe_path).stem} {label} seed {seed}: trial {number}, validation {record['validation']['accuracy']:.4f}, "
                    f"test {record['test']['accuracy']:.4f}, RM-Bench {record['rmbench']['overall']:.4f} ({record['seconds']:.1f}s)",
                    file=sys.stderr,
                )


# ----------------------------------------------------------------------------------------------------
# Tables and tests


def read_records(paths: list[str]) -> list[dict]:
    return [json.loads(line) for p in paths for line in Path(p).read_text().splitlines() if line.strip()]


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.1f} ± {100 * sd:.1f}"


def paired_t(a: list[float], b: list[float]) -> float | None:
    """Two-sided p-value of the paired t-test of a against b (same seeds)."""
    from scipy.stats import ttest_rel

    if len(a) < 2 or all(x == y for x, y in zip(a, b)):
        return None
    return float(ttest_rel(a, b).pvalue)


def mcnemar(head: list[str], bt: list[str]) -> tuple[int, int, float]:
    """Exact McNemar test over the test pairs of every seed pooled: (pairs only the head gets right, pairs only
    BT gets right, two-sided p-value)."""
    from scipy.stats import binomtest

    only_head = sum(h == "1" and b == "0" for hs, bs in zip(head, bt) for h, b in zip(hs, bs))
    only_bt = sum(h == "0" and b == "1" for hs, bs in zip(head, bt) for h, b in zip(hs, bs))
    p = binomtest(only_head, only_head + only_bt).pvalue if only_head + only_bt else 1.0
    return only_head, only_bt, float(p)


def _p(p: float | None) -> str:
    return "n/a" if p is None else f"{p:.3f}" if p >= 0.001 else "<0.001"


def grouped(records: list[dict]) -> dict[tuple[str, str], dict[int, dict]]:
    groups: dict[tuple[str, str], dict[int, dict]] = {}
    for r in records:
        groups.setdefault((r["backbone"], r["head"]), {})[r["seed"]] = r
    order = list(HEADS)
    backbones = list(dict.fromkeys(r["backbone"] for r in records))
    return dict(sorted(groups.items(), key=lambda g: (backbones.index(g[0][0]), order.index(g[0][1]))))


def print_table(paths: list[str]) -> None:
    """The summary (test accuracy and RM-Bench with tests against BT) and the RM-Bench breakdown."""
    groups = grouped(read_records(paths))
    print(
        "| backbone | head | seeds | HH test acc | Δ vs BT | t-test p | McNemar (+/−, p) | RM-Bench | Δ vs BT | t-test p | chosen trials |"
    )
    print("|---" * 11 + "|")
    for (backbone, head), runs in groups.items():
        bt = groups.get((backbone, "bt"), {})
        seeds = sorted(s for s in runs if s in bt)
        acc = [runs[s]["test"]["accuracy"] for s in seeds]
        rmb = [runs[s]["rmbench"]["overall"] for s in seeds]
        bt_acc = [bt[s]["test"]["accuracy"] for s in seeds]
        bt_rmb = [bt[s]["rmbench"]["overall"] for s in seeds]
        if head == "bt":
            tests = ["", "", "", "", ""]
        else:
            plus, minus, p = mcnemar([runs[s]["test"]["correct"] for s in seeds], [bt[s]["test"]["correct"] for s in seeds])
            tests = [
                f"{100 * statistics.mean(a - b for a, b in zip(acc, bt_acc)):+.1f}",
                _p(paired_t(acc, bt_acc)),
                f"{plus}/{minus}, {_p(p)}",
                f"{100 * statistics.mean(a - b for a, b in zip(rmb, bt_rmb)):+.1f}",
                _p(paired_t(rmb, bt_rmb)),
            ]
        trials_used = ",".join(str(runs[s]["trial"]) for s in seeds)
        cells = [_mean_sd(acc), *tests[:3], _mean_sd(rmb), *tests[3:], trials_used]
        print(f"| {backbone.removeprefix('package:')} | {head} | {len(seeds)} | " + " | ".join(cells) + " |")
    print()
    print(
        "| backbone | head | validation acc | RM-Bench hard | normal | easy | chat | code | safety | math | s per head and seed |"
    )
    print("|---" * 11 + "|")
    for (backbone, head), runs in groups.items():
        rs = list(runs.values())
        cells = [_mean_sd([r["validation"]["accuracy"] for r in rs])]
        cells += [_mean_sd([r["rmbench"][k] for r in rs]) for k in ("hard", "normal", "easy")]
        cells += [
            _mean_sd([r["rmbench"]["domains"][d] for r in rs]) if d in rs[0]["rmbench"]["domains"] else "-"
            for d in ("chat", "code", "safety", "math")
        ]
        cells.append(f"{statistics.mean(r['seconds'] for r in rs):.1f}")
        print(f"| {backbone.removeprefix('package:')} | {head} | " + " | ".join(cells) + " |")


def plot_grid(paths: list[str], out: Path) -> None:
    """Bars of HH test accuracy and RM-Bench overall per head (mean over seeds, error bar: standard deviation),
    one row of panels per backbone; BT's mean as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = grouped(read_records(paths))
    backbones = list(dict.fromkeys(b for b, _ in groups))
    fig, axes = plt.subplots(len(backbones), 2, figsize=(15, 3.6 * len(backbones)), squeeze=False)
    for row, backbone in enumerate(backbones):
        heads = [h for b, h in groups if b == backbone]
        for col, (metric, title) in enumerate(
            [
                (lambda r: r["test"]["accuracy"], "HH-RLHF held-out pair accuracy"),
                (lambda r: r["rmbench"]["overall"], "RM-Bench overall (798 rows)"),
            ]
        ):
            values = [[metric(r) for r in groups[(backbone, h)].values()] for h in heads]
            means = [statistics.mean(v) for v in values]
            sds = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]
            colours = ["tab:orange" if h == "bt" else "tab:green" if h.startswith("hyb") else "tab:blue" for h in heads]
            ax = axes[row][col]
            ax.bar(range(len(heads)), means, yerr=sds, capsize=2, color=colours)
            if "bt" in heads:
                ax.axhline(means[heads.index("bt")], color="tab:orange", lw=0.8, ls="--")
            ax.axhline(0.5, color="grey", lw=0.5)
            ax.set_xticks(range(len(heads)), heads, rotation=60, ha="right", fontsize=8)
            ax.set(title=f"{backbone.removeprefix('package:')}: {title}", ylim=(0.35, 0.75))
            ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="every head for every seed, TRIALS settings each")
    run.add_argument("recipe")
    run.add_argument("overrides", nargs="*", help="key.path=value applied to every run")
    run.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    run.add_argument("--trials", type=int, default=TRIALS, help="hyper-parameter settings per head and seed")
    run.add_argument("-o", "--out", type=Path, required=True, help="jsonl file (appended)")
    run.add_argument(
        "--heads", nargs="+", default=list(HEADS), choices=list(HEADS), metavar="HEAD", help=f"default: {' '.join(HEADS)}"
    )
    table = sub.add_parser("table", help="the markdown tables of one or more grid files")
    table.add_argument("files", nargs="+")
    plot = sub.add_parser("plot", help="bar charts of one or more grid files (PNG)")
    plot.add_argument("files", nargs="+")
    plot.add_argument("-o", "--out", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "run":
        run_grid(args.recipe, args.seeds, args.out, args.overrides, args.heads, args.trials)
    elif args.command == "table":
        print_table(args.files)
    else:
        plot_grid(args.files, args.out)


if __name__ == "__main__":
    main()
