"""`gpmctl demo`: the paper's headline on this machine, offline, in a minute or two.

Trains the embedded tiny model twice on cyclic preferences (recipes cyclic_tiny_gpm and cyclic_tiny_bt)
and prints the GPM's and BT's accuracy on each test split of gpmctl.data.cyclic (reworded, new_items,
new_edges), next to the best any scalar reward can do and to what a lookup table of training labels gets.
"""

from __future__ import annotations

import json
import sys
import time

import typer


def demo(
    out_dir: str = typer.Option("runs/demo", help="Folder for the two runs."),
    overwrite: bool = typer.Option(True, help="Start the runs again if the folder holds earlier ones."),
) -> None:
    """Train a GPM and a BT model on cyclic preferences and compare them on three test sets (offline, CPU).

    reworded: the training comparisons asked with new prompt wordings (a lookup table of training labels
    gets them all); new_items: cycles of two-word blends no training row names; new_edges: tournament
    comparisons held out of training. Prints a table on stderr and the numbers as JSON on stdout.

    Example: gpmctl demo --out-dir runs/demo
    """
    from gpmctl.config import load_recipe, resolve_recipe
    from gpmctl.train.reward import train_reward_model

    start = time.monotonic()
    runs = {}
    for kind in ("gpm", "bt"):
        recipe = load_recipe(resolve_recipe(f"cyclic_tiny_{kind}"), [f"output_dir={out_dir}/{kind}"])
        runs[kind] = str(train_reward_model(recipe, overwrite=overwrite).output_dir)
    sets = score_test_sets(runs, recipe.data.train, recipe.data.max_length)
    summary = {"sets": sets, "seconds": round(time.monotonic() - start, 1), "runs": runs}
    lines = [
        f"accuracy on cyclic preferences, GPM and BT trained on the same data ({summary['seconds']:.0f} s):",
        f"  {'set':<10} {'pairs':>6} {'GPM':>6} {'BT':>6}  {'best scalar':>11}  {'training lookup':>15}",
    ]
    for name, s in sets.items():
        numbers = f"{s['gpm']:>6.3f} {s['bt']:>6.3f}  {s['bt_ceiling']:>11.3f}  {s['lookup']:>15.3f}"
        lines.append(f"  {name:<10} {s['pairs']:>6} {numbers}")
    print("\n" + "\n".join(lines), file=sys.stderr)
    print(json.dumps(summary))


def score_test_sets(runs: dict[str, str], train_spec: str, max_length: int) -> dict[str, dict]:
    """{split: {"pairs", kind: accuracy for each run in `runs`, "bt_ceiling", "lookup"}} for every test split
    of the cyclic generator spec `train_spec` (cyclic:train?options), with its options."""
    from gpmctl.data.cyclic import TEST_SPLITS, best_scalar_accuracy, lookup_accuracy
    from gpmctl.data.sources import read_source, source_rows
    from gpmctl.eval.pairs import score_records
    from gpmctl.models.embed import load_scorer

    options = train_spec.partition("?")[2]
    train_rows = source_rows(train_spec)
    scorers = {kind: load_scorer(folder, 64, max_length, "float32", "auto") for kind, folder in runs.items()}
    table = {}
    for split in TEST_SPLITS:
        spec = f"cyclic:{split}?{options}"
        rows, records = source_rows(spec), list(read_source(spec))
        entry: dict = {"pairs": len(rows)}
        for kind, scorer in scorers.items():
            entry[kind] = sum(e["correct"] for e in score_records(scorer, records)) / len(records)
        entry.update(bt_ceiling=best_scalar_accuracy(rows), lookup=lookup_accuracy(train_rows, rows))
        table[split] = entry
    return table
