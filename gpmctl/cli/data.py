"""`gpmctl data ...`: create and inspect preference datasets."""

from __future__ import annotations

import json
from typing import Optional

import typer

app = typer.Typer(help="Read, validate, convert and synthesise preference datasets.", no_args_is_help=True)


@app.command("cyclic")
def cyclic(
    out_dir: str = typer.Argument(..., help="Folder for train.jsonl and test.jsonl."),
    seed: int = typer.Option(0, help="Random seed: the same seed writes byte-identical files."),
    num_prompts: int = typer.Option(200, help="Prompts, one cycle each."),
    num_items: int = typer.Option(12, help="Items on the preference circle (a cycle length must divide it)."),
    cycle_lengths: str = typer.Option("3", help="Comma-separated cycle lengths, e.g. 3 or 3,4,6."),
    train_renderings: int = typer.Option(4, help="Training pairs per comparison (fresh wording each)."),
    test_renderings: int = typer.Option(2, help="Held-out pairs per comparison, worded unlike any training text."),
    transitive_fraction: float = typer.Option(0.3, help="Share of prompts that also get a transitive triple (train only)."),
) -> None:
    """Write intransitive (cyclic) preference data: the paper's Table 1 experiment.

    Each prompt holds a cycle such as A > B > C > A. No scalar reward can get more than 2/3 of a
    3-cycle right; a GPM can get all of it. Prints the paths and the best accuracy a BT model could
    reach on the test pairs, as JSON on stdout.

    Example: gpmctl data cyclic data/cyclic --seed 0
    """
    from gpmctl.data.cyclic import CyclicConfig, best_scalar_accuracy, generate_cyclic, write_cyclic
    from gpmctl.errors import ConfigError

    try:
        lengths = tuple(int(x) for x in cycle_lengths.split(","))
    except ValueError:
        raise ConfigError(f"--cycle-lengths: expected comma-separated integers, got {cycle_lengths!r}") from None
    cfg = CyclicConfig(num_prompts=num_prompts, num_items=num_items, cycle_lengths=lengths, train_renderings=train_renderings,
                       test_renderings=test_renderings, transitive_fraction=transitive_fraction, seed=seed)  # fmt: skip
    paths = write_cyclic(out_dir, cfg)
    _, test_rows = generate_cyclic(cfg)
    summary = {name: str(p) for name, p in paths.items()}
    summary["bt_ceiling_test"] = round(best_scalar_accuracy(test_rows, num_items), 4)
    print(json.dumps(summary))


@app.command("stats", hidden=True)
def stats(path: str, limit: Optional[int] = None) -> None:
    """Count the pairs of a file (more statistics come with the data issue)."""
    from gpmctl.data.records import read_records

    n = sum(1 for _ in read_records(path, limit=limit))
    print(json.dumps({"path": path, "pairs": n}))
