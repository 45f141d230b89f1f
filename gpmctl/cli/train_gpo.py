"""`gpmctl train-gpo RECIPE [key.path=value ...]`: General Preference Optimization of a policy."""

from __future__ import annotations

import inspect
from typing import Optional

import typer

EPILOG = """Examples:

  gpmctl train-gpo gpo_tiny                                           (CPU, trains its judge if missing)

  gpmctl train-gpo gpo_tiny objective.loss=sppo output_dir=runs/sppo   (SPPO instead of GPO)

  gpmctl train-gpo gpo_tiny objective.train_on=all objective.length_norm=true

  gpmctl train-gpo my.yaml --resume auto                               (continue at the unfinished iteration)

  gpmctl train-gpo gpo_llama3_8b judge.model=runs/gpm_8b               (8 GPUs, ZeRO-3: re-runs itself under accelerate launch)
"""


def train_gpo(
    recipe: str = typer.Argument(..., help="GPO recipe YAML (kind: gpo), or the name of a shipped one (gpo_tiny)."),
    overrides: Optional[list[str]] = typer.Argument(None, help="key.path=value pairs overriding the recipe."),
    resume: Optional[str] = typer.Option(
        None, "--resume", help="`auto`: skip finished iterations, reuse saved generations of the unfinished one."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Start again in an output_dir that already holds a run (iter-* are deleted)."
    ),
    print_recipe: bool = typer.Option(False, "--print-recipe", help="Print the resolved recipe as YAML on stdout and exit."),
) -> None:
    """Optimise a policy against a GPM or BT judge by iterated self-play: GPO (or SPPO, objective.loss).

    Each iteration samples K responses per prompt from the current policy, scores each once with the
    judge (K x K table), regresses log(pi/pi_t) on (1/beta) times the response's mean score against the
    other samples, and reports the held-out win rate of the new policy against pi_0 and the previous
    one. Generations, score tables, training pairs, policies and metrics are saved per iteration in
    output_dir/iter-t/. A summary JSON goes to stdout; logs to stderr.
    """
    from gpmctl.config import dump_recipe, resolve_recipe
    from gpmctl.config.train_gpo import check_judge, check_policy, load_gpo_recipe

    config = load_gpo_recipe(resolve_recipe(recipe), overrides or [])
    if print_recipe:
        print(dump_recipe(config), end="")
        return
    check_judge(config)
    check_policy(config)
    from gpmctl.engine import launch

    argv = launch.command_argv("train-gpo", recipe, overrides or [], resume=resume, overwrite=overwrite)

    def train():
        from gpmctl.train.gpo import train_gpo as run

        return run(config, resume=resume, overwrite=overwrite)

    t = config.train
    code = launch.run_training(
        launch.plan_launch(config.launch, argv), config.launch, t.batch_size * t.grad_accum, train, lambda: _report(config)
    )
    raise typer.Exit(code)


def _report(config) -> None:
    """One JSON line on stdout: the run folder, the final policy, every iteration's metrics and the best iteration."""
    import json
    from pathlib import Path

    summary = json.loads((Path(config.output_dir) / "metrics.json").read_text())
    report = {"output_dir": config.output_dir, "policy": summary["policy"], "iterations": summary["iterations"]}
    print(json.dumps(report | ({"best": summary["best"]} if "best" in summary else {})), flush=True)


train_gpo.__doc__ = inspect.cleandoc(train_gpo.__doc__) + "\n\n" + EPILOG  # cleandoc first: EPILOG is not indented
