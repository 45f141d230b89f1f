"""The paper's Table 1 (cyclic preferences) with frozen pretrained backbones: BT, GPM and the gpm_bt hybrid trained
on cached backbone features of cyclic preferences written as sentences, scored on every test split of
gpmctl.data.cyclic next to the exact BT ceiling of that split.

    python docs/cyclic_pretrained.py tune -o docs/results/cyclic_pretrained_tune.jsonl
    python docs/cyclic_pretrained.py tune --lrs 0.03 0.1 --epochs 30 100 -o docs/results/cyclic_pretrained_tune.jsonl
    python docs/cyclic_pretrained.py run --seeds 0 1 2 3 4 -o docs/results/cyclic_pretrained.jsonl
    python docs/cyclic_pretrained.py table docs/results/cyclic_pretrained.jsonl
    python docs/cyclic_pretrained.py features smollm2 model.eos=overwrite

Each run is one `train_reward_model` on recipes/cyclic_{backbone}_{head}.yaml (the `gpmctl train-rm` frozen-backbone
path: the head trains on cached features; log.jsonl and metrics.json under runs/cyclic_pretrained/, no model
folder). The data is the recipe's `cyclic:train?...` spec and the same options' test splits, tokenised once per
backbone; every head reads the same token (the recipes set model.eos), so the features are one cache file per
backbone and data: train plus every test split (`run`), or train alone (`tune`).

`tune` picks lr and epochs without looking at a test split: each (lr, epochs) of the grid trains every head of
every backbone on 80% of the training prompts and is scored on the other 20% (gpmctl.data.split.split_by_prompt);
the setting with the best mean validation accuracy over heads and backbones is printed, to be written into the
six recipes (the temperatures stay the paper's: tau 0.1 for the GPM and gpm_bt blocks, 1.0 for BT and gpm_bt's scalar).
`run` trains each head for each seed with the recipes' settings (the seed moves the head's initialisation and the
batch order; the data is fixed) and appends one JSON line per run: accuracy on the training pairs and on each test
split, with that split's BT ceiling (gpmctl.data.cyclic.best_scalar_accuracy: the best any scalar reward of the
items can do) and the accuracy of a lookup table of training labels. `table` prints mean ± std over seeds.
`features` describes the cached features of the training sequences (why a head can or cannot separate the items).
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
from gpmctl.data.cyclic import TEST_SPLITS, best_scalar_accuracy, lookup_accuracy
from gpmctl.data.formats import ReadOptions
from gpmctl.data.sources import read_source, source_rows
from gpmctl.data.split import split_by_prompt
from gpmctl.data.tokenize import EncodedPair, SequenceEncoder
from gpmctl.engine import Engine
from gpmctl.models.build import build_model
from gpmctl.models.sources import load_tokenizer
from gpmctl.train.features import FeaturePairs, cached_features, feature_pairs
from gpmctl.train.reward import evaluate, train_reward_model

BACKBONES = ("minilm", "smollm2")
HEADS = ("bt", "gpm", "gpm_bt")
LRS = (1e-3, 3e-3, 1e-2)
EPOCHS = (10, 30)
VALIDATION_FRACTION = 0.2
RUNS = Path("runs/cyclic_pretrained")


def recipe_path(backbone: str, head: str) -> str:
    return f"recipes/cyclic_{backbone}_{head}.yaml"


def split_spec(train_spec: str, split: str) -> str:
    """`cyclic:train?OPTIONS` -> `cyclic:SPLIT?OPTIONS` (the test split generated with the training options)."""
    return f"cyclic:{split}?{train_spec.partition('?')[2]}"


class CyclicData:
    """The cyclic rows of a backbone's recipes, as rows (for the ceilings) and as tokenised pairs (for training)."""

    def __init__(self, backbone: str, overrides: tuple[str, ...] = ()):
        recipes = [load_recipe(recipe_path(backbone, head), list(overrides)) for head in HEADS]
        base = recipes[0]
        token_rules = {
            (r.model.backbone, r.model.resolved_eos(), r.model.gate_prompt, r.data.train, r.data.max_length) for r in recipes
        }
        if len(token_rules) > 1:  # the heads must read the same features
            raise SystemExit(f"{backbone}: the recipes differ in backbone, eos, gate_prompt, data or max_length: {token_rules}")
        m, d = base.model, base.data
        self.eos = m.resolved_eos()
        self.tokenizer = load_tokenizer(m.tokenizer or m.backbone)
        self.encoder = SequenceEncoder(self.tokenizer, d.max_length, m.resolved_eos(), m.gate_prompt, d.truncation)
        self.specs = {split: split_spec(d.train, split) for split in ("train", *TEST_SPLITS)}
        self.rows = {split: source_rows(spec) for split, spec in self.specs.items()}
        self.records = {split: list(read_source(spec, options=ReadOptions())) for split, spec in self.specs.items()}

    def encode(self, records: list, where: str) -> list[EncodedPair]:
        return [self.encoder.encode_pair(r, f"{where}:{i + 1}") for i, r in enumerate(records)]


def train_head(backbone: str, head: str, seed: int, pairs: tuple[list, list], overrides: list[str], label: str):
    recipe = load_recipe(recipe_path(backbone, head), [*overrides, f"train.seed={seed}", f"output_dir={RUNS / backbone / label}"])
    return recipe, train_reward_model(recipe, overwrite=True, save=False, pairs=pairs)


def split_accuracies(recipe, model, pad_id: int, train: list[EncodedPair], tests: dict[str, list[EncodedPair]]) -> dict:
    """Pair accuracy of the trained model on the training pairs and on each test split (gpmctl's `evaluate`, on the
    cached features of the run: the same file, so nothing is recomputed)."""
    held = [p for pairs in tests.values() for p in pairs]
    train_source, held_source, _ = feature_pairs(model, train, held, pad_id)
    engine, tau = Engine.local(), recipe.model.resolved_tau()

    def accuracy(source, pairs) -> float:
        return evaluate(engine, model, source, 512, tau, [p.meta for p in pairs], [p.label for p in pairs])["accuracy"]

    result, start = {"train": accuracy(train_source, train)}, 0
    for split, pairs in tests.items():
        index = list(range(start, start + len(pairs)))
        result[split] = accuracy(FeaturePairs(held_source.chosen.rows(index), held_source.rejected.rows(index), pairs), pairs)
        start += len(pairs)
    return result


def run_seeds(backbones: list[str], seeds: list[int], out: Path) -> None:
    """Every head of every backbone for every seed; (backbone, head, seed) runs already in `out` are skipped."""
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {(r["backbone"], r["head"], r["seed"]) for r in read_jsonl([out])} if out.is_file() else set()
    with open(out, "a", encoding="utf-8") as f:
        for backbone in backbones:
            data = CyclicData(backbone)
            train = data.encode(data.records["train"], data.specs["train"])
            tests = {split: data.encode(data.records[split], data.specs[split]) for split in TEST_SPLITS}
            ceilings = {split: best_scalar_accuracy(data.rows[split]) for split in TEST_SPLITS}
            lookup = {split: lookup_accuracy(data.rows["train"], data.rows[split]) for split in TEST_SPLITS}
            held = [p for pairs in tests.values() for p in pairs]  # one feature file: train + every test split
            for seed in seeds:
                for head in HEADS:
                    if (backbone, head, seed) in done:
                        continue
                    started = time.perf_counter()
                    recipe, run = train_head(backbone, head, seed, (train, held), [], f"{head}-s{seed}")
                    scored = time.perf_counter()
                    accuracy = split_accuracies(recipe, run.model, data.tokenizer.pad_token_id, train, tests)
                    record = {
                        "backbone": recipe.model.backbone,
                        "name": backbone,
                        "head": head,
                        "seed": seed,
                        "settings": {
                            "lr": recipe.train.lr,
                            "epochs": recipe.train.epochs,
                            "tau": recipe.model.resolved_tau(),
                            "bt_tau": recipe.model.bt_tau if head == "gpm_bt" else None,
                            "eos": recipe.model.resolved_eos(),
                        },
                        "accuracy": accuracy,
                        "bt_ceiling": ceilings,
                        "lookup": lookup,
                        "pairs": {"train": len(train), **{split: len(pairs) for split, pairs in tests.items()}},
                        "timing": run.timing
                        | {"score_s": round(time.perf_counter() - scored, 2), "run_s": round(time.perf_counter() - started, 2)},
                    }
                    f.write(json.dumps(record) + "\n")
                    f.flush()
                    shown = ", ".join(f"{k} {v:.3f}" for k, v in accuracy.items())
                    print(f"{backbone} {head} seed {seed}: {shown} ({record['timing']['run_s']:.0f} s)", file=sys.stderr)


def tune(backbones: list[str], seed: int, out: Path, lrs: list[float], epochs_grid: list[int]) -> None:
    """The lr x epochs grid on a validation split of the training prompts; prints the best setting."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a", encoding="utf-8") as f:
        for backbone in backbones:
            data = CyclicData(backbone)
            fit_records, val_records = split_by_prompt(data.records["train"], VALIDATION_FRACTION, seed)
            pairs = (
                data.encode(fit_records, data.specs["train"]),
                data.encode(val_records, data.specs["train"] + " (validation)"),
            )
            for lr in lrs:
                for epochs in epochs_grid:
                    for head in HEADS:
                        overrides = [f"train.lr={lr}", f"train.epochs={epochs}"]
                        _, run = train_head(backbone, head, seed, pairs, overrides, f"tune-{head}-lr{lr}-e{epochs}")
                        record = {"name": backbone, "head": head, "seed": seed, "lr": lr, "epochs": epochs, "eos": data.eos}
                        record |= {"validation": run.final_metrics["accuracy"], "pairs": [len(p) for p in pairs]}
                        f.write(json.dumps(record) + "\n")
                        f.flush()
                        print(
                            f"tune {backbone} {head} lr {lr} epochs {epochs}: validation {record['validation']:.4f}",
                            file=sys.stderr,
                        )
    print_tune_table([out])


def variance_share(x: torch.Tensor, groups: list[str]) -> float:
    """The part of the total variance of the rows of x [n, H] that lies between the means of their groups."""
    centred = x - x.mean(0)
    between = 0.0
    for g in set(groups):
        rows = torch.tensor([i for i, name in enumerate(groups) if name == g])
        between += len(rows) * float(((x[rows].mean(0) - x.mean(0)) ** 2).sum())
    return between / float((centred**2).sum())


def feature_report(backbone: str, overrides: list[str]) -> dict:
    """How the backbone's cached read features of the training sequences hold the items: their geometry, the share
    of their variance between items and between prompts, and a ridge probe naming the item of held-out sequences."""
    data = CyclicData(backbone, tuple(overrides))
    recipe = load_recipe(recipe_path(backbone, "gpm"), overrides)
    model = build_model(recipe.model, data.tokenizer, recipe.train.seed)
    pairs, rows = data.encode(data.records["train"], data.specs["train"]), data.rows["train"]
    x = cached_features(model, [p.chosen for p in pairs] + [p.rejected for p in pairs], data.tokenizer.pad_token_id).read.double()
    items = [r["chosen_item"] for r in rows] + [r["rejected_item"] for r in rows]
    prompts = [r["prompt"] for r in rows] * 2
    unit = torch.nn.functional.normalize(x, dim=1)
    centred = x - x.mean(0)
    # Ridge probe: one-hot items from standardised features, fitted on 80% of the sequences, scored on the rest.
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    fit, held = order[: int(0.8 * len(x))], order[int(0.8 * len(x)) :]
    z = (x - x[fit].mean(0)) / (x[fit].std(0) + 1e-6)
    z = torch.cat([z, torch.ones(len(z), 1, dtype=z.dtype)], 1)
    names = sorted(set(items))
    label = torch.tensor([names.index(i) for i in items])
    target = torch.nn.functional.one_hot(label, len(names)).double()
    w = torch.linalg.solve(z[fit].T @ z[fit] + torch.eye(z.shape[1], dtype=z.dtype), z[fit].T @ target[fit])
    return {
        "name": backbone,
        "eos": data.eos,
        "sequences": len(x),
        "mean_cosine": float((unit @ unit.T).mean()),
        "mean_norm": float(x.norm(dim=1).mean()),
        "top_dimension_share": float((centred**2).sum(0).max() / (centred**2).sum()),
        "item_share": variance_share(x, items),
        "prompt_share": variance_share(x, prompts),
        "items": len(names),
        "prompts": len(set(prompts)),
        "probe_accuracy": float(((z[held] @ w).argmax(1) == label[held]).double().mean()),
    }


def read_jsonl(paths: list[Path]) -> list[dict]:
    return [json.loads(line) for p in paths for line in Path(p).read_text().splitlines() if line.strip()]


def print_tune_table(paths: list[Path]) -> None:
    records = read_jsonl(paths)
    columns = sorted({(r["name"], r["head"]) for r in records}, key=lambda c: (c[0], HEADS.index(c[1])))
    print("| lr | epochs | " + " | ".join(f"{name} {head}" for name, head in columns) + " | mean |")
    print("|---" * (len(columns) + 3) + "|")
    means = {}
    for lr in sorted({r["lr"] for r in records}):
        for epochs in sorted({r["epochs"] for r in records}):
            cells = [
                [r["validation"] for r in records if (r["name"], r["head"], r["lr"], r["epochs"]) == (*c, lr, epochs)]
                for c in columns
            ]
            if not all(cells):
                continue
            means[(lr, epochs)] = statistics.mean(statistics.mean(c) for c in cells)
            shown = " | ".join(f"{100 * statistics.mean(c):.1f}" for c in cells)
            print(f"| {lr:g} | {epochs} | {shown} | {100 * means[(lr, epochs)]:.1f} |")
    if means:
        lr, epochs = max(means, key=means.get)
        print(f"\nbest mean validation accuracy: lr {lr:g}, epochs {epochs}")


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.1f} ± {100 * sd:.1f}"


def print_table(paths: list[Path]) -> None:
    """Mean ± std over seeds per backbone and head; then each split's BT ceiling and lookup-table accuracy."""
    records = read_jsonl(paths)
    columns = ["train", *TEST_SPLITS]
    print("| backbone | head | seeds | " + " | ".join(columns) + " | head train s |")
    print("|---" * (len(columns) + 4) + "|")
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        groups.setdefault((r["name"], r["head"]), []).append(r)
    names = list(dict.fromkeys(name for name, _ in groups))
    for (name, head), rs in sorted(groups.items(), key=lambda g: (names.index(g[0][0]), HEADS.index(g[0][1]))):
        cells = [_mean_sd([r["accuracy"][c] for r in rs]) for c in columns]
        cells.append(f"{statistics.mean(r['timing']['training_s'] for r in rs):.1f}")
        print(f"| {name} | {head} | {len(rs)} | " + " | ".join(cells) + " |")
    for label, key in (("BT ceiling (exact)", "bt_ceiling"), ("lookup table of training labels", "lookup")):
        values = {json.dumps(r[key], sort_keys=True) for r in records}  # the same data for every backbone
        for value in values:
            shown = " | ".join(f"{100 * json.loads(value)[s]:.1f}" for s in TEST_SPLITS)
            print(f"| {label} | | | | {shown} | |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    tune_cmd = sub.add_parser("tune", help="the lr x epochs grid on a validation split of the training prompts")
    tune_cmd.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=BACKBONES)
    tune_cmd.add_argument("--seed", type=int, default=0, help="of the validation split and the heads")
    tune_cmd.add_argument("--lrs", type=float, nargs="+", default=list(LRS))
    tune_cmd.add_argument("--epochs", type=int, nargs="+", default=list(EPOCHS))
    tune_cmd.add_argument("-o", "--out", type=Path, required=True, help="jsonl file (appended)")
    run = sub.add_parser("run", help="train and score every head for every seed with the recipes' settings")
    run.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=BACKBONES)
    run.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    run.add_argument("-o", "--out", type=Path, required=True, help="jsonl file (appended)")
    features = sub.add_parser("features", help="how the cached training features hold the items (one JSON line)")
    features.add_argument("backbone", choices=BACKBONES)
    features.add_argument("overrides", nargs="*", help="key.path=value for the recipes, e.g. model.eos=overwrite")
    table = sub.add_parser("table", help="the markdown table of one or more run files (tune files: the grid)")
    table.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args()
    if args.command == "tune":
        tune(args.backbones, args.seed, args.out, args.lrs, args.epochs)
    elif args.command == "run":
        run_seeds(args.backbones, args.seeds, args.out)
    elif args.command == "features":
        print(json.dumps(feature_report(args.backbone, args.overrides)))
    elif "validation" in read_jsonl(args.files[:1])[0]:
        print_tune_table(args.files)
    else:
        print_table(args.files)


if __name__ == "__main__":
    main()
