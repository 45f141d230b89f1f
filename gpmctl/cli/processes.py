"""`--num-processes N` of the scoring commands (`gpmctl score`, `gpmctl eval ...`): the same command on N processes.

    gpmctl score a.jsonl b.jsonl -m runs/gpm --num-processes 8      (one process per GPU)

With N > 1 and no launcher around it the command re-runs itself, with the same arguments, under `accelerate
launch` with the `ddp` profile (gloo on a CPU machine, each process with its share of the CPU threads);
under an existing accelerate launch, torchrun or srun it runs in place (the rules: gpmctl/engine/launch.py).
Every process loads the whole model and embeds the blocks of input dealt to it; process 0 alone reads the
input of `score`, writes files and prints. The blocks are those a single process embeds, batched the same
way, so the output is byte-identical to one process's.
"""

from __future__ import annotations

import contextlib

import typer

NUM_PROCESSES_HELP = (
    "Processes in all (one per GPU): the input is dealt to them in blocks; re-runs itself under accelerate launch. "
    "Under accelerate launch, torchrun or srun the launcher's processes are used."
)


def num_processes_option():
    return typer.Option(1, "--num-processes", min=1, help=NUM_PROCESSES_HELP)


def same_command(ctx: typer.Context) -> list[str]:
    """The `gpmctl` arguments that run this command again with the values it was given (`score a b -m M ...`):
    what a re-execution under accelerate launch passes on. Options at their default are left out."""
    names, c = [], ctx
    while c.parent is not None:
        names.insert(0, c.info_name)
        c = c.parent
    argv = names
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if param.param_type_name == "argument":
            argv += [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]
        elif value is None or value == param.default or param.name == "help":
            continue
        elif param.is_flag:
            argv.append(param.opts[0] if value else param.secondary_opts[0])
        else:
            argv += [item for v in (value if param.multiple else [value]) for item in (param.opts[0], str(v))]
    return argv


def start(ctx: typer.Context, num_processes: int, device: str):
    """Where a scoring command starts its processes. The process the user started re-runs the command on
    `num_processes` processes and exits with their code (typer.Exit); a process that runs it (the only one, or
    one of a launcher's) gets its gpmctl.engine.Engine (`scoring` runs the work inside
    `gpmctl.engine.launch.worker(errors_agreed=True)`)."""
    from gpmctl.engine import Engine, launch
    from gpmctl.errors import ConfigError
    from gpmctl.utils import log, resolve_device

    device = resolve_device(device)
    plan = launch.plan_processes(num_processes, same_command(ctx), device)
    if plan.world_size > 1 and device not in ("cpu", "cuda"):
        raise ConfigError(f"--device {device}: each of several processes takes its own GPU (or the CPU); use auto, cuda or cpu")
    if plan.command is not None:
        log(f"launch: {plan.reason}: {plan.shell()}")
        raise typer.Exit(launch.run_plan(plan))
    return Engine.inference(device)


@contextlib.contextmanager
def scoring(
    ctx: typer.Context,
    num_processes: int,
    model: str,
    batch_size: int,
    max_length: int,
    dtype: str,
    device: str,
    share_prompt,
    deterministic: bool = False,
):
    """(engine, scorer) of this process (`start`), the model loaded on its device; the block runs inside
    `gpmctl.engine.launch.worker(errors_agreed=True)`: a gpmctl error is one line from process 0."""
    from gpmctl.engine.launch import worker
    from gpmctl.models.embed import load_scorer

    engine = start(ctx, num_processes, device)
    global _leave_at_exit
    _leave_at_exit = engine.world > 1
    # under a launcher, "cuda" is this process's GPU (accelerate set it) and the settings saved read as one process's
    here = engine.device.type if engine.world > 1 else str(engine.device)
    with worker(errors_agreed=True):
        yield engine, load_scorer(model, batch_size, max_length, dtype, here, share_prompt, deterministic)


_leave_at_exit = False


def leaving() -> bool:
    """True in a process of a multi-process scoring command (set by `scoring`): `gpmctl.cli.main` ends it by `leave`."""
    return _leave_at_exit


def leave(code) -> None:
    """End a scoring worker whose command has finished (written, closed and printed everything) without the
    interpreter's teardown: tearing down gloo's threads at exit can abort a finished process ("terminate called
    without an active exception", SIGABRT), which fails a run whose output is complete."""
    import os
    import sys

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code if isinstance(code, int) else 0 if code is None else 1)
