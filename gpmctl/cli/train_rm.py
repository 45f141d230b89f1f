"""`gpmctl train-rm RECIPE [key.path=value ...]`: train a BT reward model or a GPM."""

from __future__ import annotations

import inspect
from typing import Optional

import typer

EPILOG = """Examples:

  gpmctl train-rm cyclic_tiny_gpm                                    (a shipped recipe by name: CPU, a minute)

  gpmctl train-rm cyclic_tiny_bt output_dir=runs/bt train.lr=3e-3

  gpmctl train-rm my.yaml model.dim=8 model.gate=true --resume auto  (continue after preemption)

  gpmctl train-rm gpm_8b --dry-run                                   (launch command, world size, batch, memory)

  gpmctl train-rm my.yaml launch.profile=zero3 launch.num_processes=8 (re-runs itself under accelerate launch)
"""


def train_rm(
    recipe: str = typer.Argument(..., help="Recipe YAML file, or the name of a shipped recipe (see `gpmctl recipes ls`)."),
    overrides: Optional[list[str]] = typer.Argument(None, help="key.path=value pairs overriding the recipe."),
    resume: Optional[str] = typer.Option(
        None, "--resume", help="`auto` (newest checkpoint in output_dir, if any) or a checkpoint folder."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start again in an output_dir that already holds a run."),
    stop_after_steps: Optional[int] = typer.Option(
        None, "--stop-after-steps", help="Checkpoint and stop (exit 75) after N optimizer steps, as on preemption."
    ),
    print_recipe: bool = typer.Option(False, "--print-recipe", help="Print the resolved recipe as YAML on stdout and exit."),
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="Print the launch command, world size, global batch, memory estimate and where each launch setting came from "
        "(recipe, command line, profile file, default accelerate config) as JSON; train nothing.",
    ),
) -> None:
    """Train a reward model (BT) or a General Preference Model (GPM) from a YAML recipe.

    The resolved recipe, an environment report, log.jsonl and checkpoints go to output_dir; the final
    model is written there as a folder the other commands accept as --model. On SIGTERM or SIGUSR1 the
    run checkpoints and exits with code 75; run the same command with --resume auto to continue.
    With `launch.num_processes` > 1 (or a DeepSpeed profile) and no launcher around it, the command
    re-runs itself under `accelerate launch --config_file <profile>`; under an existing accelerate
    launch, torchrun or Slurm srun it runs in place (--dry-run shows which, and why).
    """
    from gpmctl.config import dump_recipe, load_recipe, resolve_recipe

    config = load_recipe(resolve_recipe(recipe), overrides or [])
    if print_recipe:
        print(dump_recipe(config), end="")
        return
    from gpmctl.engine import launch

    argv = launch.command_argv(
        "train-rm", recipe, overrides or [], resume=resume, overwrite=overwrite, stop_after_steps=stop_after_steps
    )
    plan = launch.plan_launch(config.launch, argv)
    if dry_run:
        import json

        print(json.dumps(dry_run_report(config, plan), indent=2))
        return

    def train():
        from gpmctl.train.reward import train_reward_model

        return train_reward_model(config, resume=resume, overwrite=overwrite, stop_after_steps=stop_after_steps)

    t = config.train
    # the recipe's `evaluate:` benchmarks run in the reporting process, on the saved model
    code = launch.run_training(
        plan, config.launch, t.batch_size * t.grad_accum, train, lambda: _report(config, _benchmarks(config))
    )
    raise typer.Exit(code)


def _benchmarks(config) -> dict:
    """The recipe's `evaluate:` benchmarks on the saved model (nothing when the section names none)."""
    from gpmctl.eval.benchmarks import after_training

    return after_training(config, config.output_dir)


def _report(config, benchmarks: dict) -> None:
    """One JSON line on stdout: where the model is, its steps, its eval metrics and benchmark headlines."""
    import json
    from pathlib import Path

    metrics = json.loads((Path(config.output_dir) / "metrics.json").read_text())
    summary = {"output_dir": config.output_dir, "steps": metrics["steps"], "eval": metrics["model_eval"]}
    print(json.dumps(summary | ({"benchmarks": benchmarks} if benchmarks else {})), flush=True)


def dry_run_report(config, plan) -> dict:
    """What a run would do, from the recipe and the backbone's config (no weights are read)."""
    from gpmctl.engine import launch

    t, lc = config.train, config.launch
    world = plan.world_size if plan.command is None and plan.world_size > 1 else lc.num_processes
    params, source = launch.count_parameters(config.model)
    mixed = t.precision != "fp32"  # per GPU: `auto` is bf16 there
    engine = launch.profile_engine(lc.profile)
    values = {
        "launch.profile": lc.profile,
        "launch.num_processes": lc.num_processes,
        "launch.num_machines": lc.num_machines,
        "launch.main_process_port": lc.main_process_port,
        "train.precision": t.precision,
        "engine": engine if engine != "DEEPSPEED" else f"DEEPSPEED ZeRO-{launch.zero_stage(lc.profile)}",
    }
    return {
        "launch": plan.shell(),
        "reason": plan.reason,
        "profile": lc.profile,
        "engine": engine,
        # recipe, command line, profile file, default accelerate config, shipped profile or gpmctl default
        "settings": {key: {"value": value, "from": config.launch_from.get(key, "recipe")} for key, value in values.items()},
        "world_size": world,
        "num_machines": lc.num_machines,
        "global_batch": t.batch_size * t.grad_accum * world,
        "batch": f"{t.batch_size} pairs x {t.grad_accum} accumulation x {world} processes",
        "parameters": params,
        "parameters_from": source,
        "model_states_gib_per_gpu": None
        if params is None
        else round(launch.model_state_gib(params, lc.profile, world, mixed), 2),
        "memory_note": "parameters + gradients + AdamW state on a GPU (ZeRO accounting, bf16 mixed precision unless "
        "train.precision=fp32); activations and buffers not included",
        "then_evaluate": {
            name: source
            for name, source in (("rewardbench", config.evaluate.rewardbench), ("rmbench", config.evaluate.rmbench))
            if source
        },
    }


train_rm.__doc__ = inspect.cleandoc(train_rm.__doc__) + "\n\n" + EPILOG  # cleandoc first: EPILOG is not indented
