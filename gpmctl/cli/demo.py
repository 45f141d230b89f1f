"""`gpmctl demo`: the paper's headline on this machine, offline, in a few minutes.

Trains the embedded tiny model twice on cyclic preferences (recipes cyclic_tiny_gpm and cyclic_tiny_bt)
and prints held-out pair accuracy of the GPM next to BT's and next to the best any scalar reward can do.
"""

from __future__ import annotations

import json
import sys

import typer


def demo(
    out_dir: str = typer.Option("runs/demo", help="Folder for the two runs."),
    overwrite: bool = typer.Option(True, help="Start the runs again if the folder holds earlier ones."),
) -> None:
    """Train a GPM and a BT model on cyclic preferences and compare them (offline, CPU, minutes).

    Example: gpmctl demo --out-dir runs/demo
    """
    from gpmctl.config import load_recipe, resolve_recipe
    from gpmctl.data.cyclic import best_scalar_accuracy
    from gpmctl.data.sources import source_rows
    from gpmctl.train.reward import train_reward_model

    results = {}
    for kind in ("gpm", "bt"):
        recipe = load_recipe(resolve_recipe(f"cyclic_tiny_{kind}"), [f"output_dir={out_dir}/{kind}"])
        results[kind] = train_reward_model(recipe, overwrite=overwrite)
    test_spec = recipe.data.eval
    ceiling = best_scalar_accuracy(source_rows(test_spec), _num_items(test_spec))
    summary = {
        "gpm_accuracy": results["gpm"].final_metrics.get("accuracy"),
        "bt_accuracy": results["bt"].final_metrics.get("accuracy"),
        "bt_ceiling": ceiling,
        "runs": {k: str(r.output_dir) for k, r in results.items()},
    }
    print(
        f"\nheld-out accuracy on cyclic preferences ({results['gpm'].final_metrics.get('pairs')} pairs):\n"
        f"  GPM  {summary['gpm_accuracy']:.3f}\n  BT   {summary['bt_accuracy']:.3f}   (best any scalar reward can do: {ceiling:.3f})",
        file=sys.stderr,
    )
    print(json.dumps(summary))


def _num_items(spec: str) -> int:
    from gpmctl.data.sources import parse_cyclic_spec

    return parse_cyclic_spec(spec)[1].num_items
