"""`gpmctl train-rm RECIPE [key.path=value ...]`: train a BT reward model or a GPM."""

from __future__ import annotations

from typing import Optional

import typer

EPILOG = """Examples:

  gpmctl train-rm recipes/cyclic_tiny_gpm.yaml

  gpmctl train-rm cyclic_tiny_bt output_dir=runs/bt train.lr=3e-3    (a shipped recipe by name)

  gpmctl train-rm my.yaml model.dim=8 model.gate=true --resume auto  (continue after preemption)
"""


def train_rm(
    recipe: str = typer.Argument(..., help="Recipe YAML file, or the name of a shipped recipe (see recipes/)."),
    overrides: Optional[list[str]] = typer.Argument(None, help="key.path=value pairs overriding the recipe."),
    resume: Optional[str] = typer.Option(None, "--resume", help="`auto` (newest checkpoint in output_dir, if any) or a checkpoint folder."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start again in an output_dir that already holds a run."),
    stop_after_steps: Optional[int] = typer.Option(None, "--stop-after-steps", help="Checkpoint and stop (exit 75) after N optimizer steps, as on preemption."),
    print_recipe: bool = typer.Option(False, "--print-recipe", help="Print the resolved recipe as YAML on stdout and exit."),
) -> None:
    """Train a reward model (BT) or a General Preference Model (GPM) from a YAML recipe.

    The resolved recipe, an environment report, log.jsonl and checkpoints go to output_dir; the final
    model is written there as a folder the other commands accept as --model. On SIGTERM or SIGUSR1 the
    run checkpoints and exits with code 75; run the same command with --resume auto to continue.
    """
    from gpmctl.config import dump_recipe, load_recipe, resolve_recipe

    config = load_recipe(resolve_recipe(recipe), overrides or [])
    if print_recipe:
        print(dump_recipe(config), end="")
        return
    from gpmctl.train.reward import train_reward_model

    result = train_reward_model(config, resume=resume, overwrite=overwrite, stop_after_steps=stop_after_steps)
    import json

    print(json.dumps({"output_dir": str(result.output_dir), "steps": result.steps, "eval": result.final_metrics}))


train_rm.__doc__ = (train_rm.__doc__ or "") + "\n\n" + EPILOG
