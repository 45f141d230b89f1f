"""Resumable training checkpoints: everything needed to continue a run bit for bit.

    <output_dir>/checkpoints/step-000120/
        model.safetensors      the trainable module's state (tied weights stored once)
        optimizer.pt           optimizer state, read back with torch.load(weights_only=True): no unpickling
        rng.safetensors        torch CPU (and CUDA) generator states
        trainer_state.json     step, epoch, position in the epoch, best metric, scheduler state, Python RNG

An engine that shards the model over the ranks writes its own files instead of model.safetensors /
optimizer.pt / rng.safetensors (gpmctl.engine.Engine.save_state); trainer_state.json also records the
layout that wrote it (world_size, batch_size, grad_accum, engine), which `Engine.check_resumable` reads.

A checkpoint folder is written under a temporary name and renamed when complete, so a preempted save
never leaves a checkpoint that looks finished; one damaged later (a truncated copy, a full disk) raises
UnreadableCheckpoint when read, and `--resume auto` falls back to the checkpoint before it.

A run holds an exclusive lock on <output_dir>/.lock (`RunLock`) while it writes there.
"""

from __future__ import annotations

import fcntl
import json
import os
import pickle
import random
import re
import shutil
from pathlib import Path

import torch

from gpmctl.errors import ConfigError, GpmctlError
from gpmctl.utils import first_line

CHECKPOINTS = "checkpoints"
LOCK_FILE = ".lock"
_NAME = re.compile(r"^step-(\d+)$")


class UnreadableCheckpoint(GpmctlError):
    """A checkpoint folder whose files do not read back (truncated, corrupt, missing)."""


class RunLock:
    """An exclusive flock on <output_dir>/.lock, taken by rank 0 before a run's first write in the folder
    and held to its end, so a second run into the same folder stops at once instead of interleaving
    with the first. The file stays (removing it would let a third run lock a new file beside a held one)."""

    def __init__(self, output_dir: str | Path):
        self.path = Path(output_dir) / LOCK_FILE
        self.file = None

    def acquire(self, engine, create: bool = True) -> None:
        """Lock (every rank learns rank 0's result; `engine`: gpmctl.engine.Engine); `create=False` only tries
        a lock file left by an earlier run, so that a busy folder is refused before anything is written."""
        held = True
        if engine.is_main and self.file is None and (create or self.path.is_file()):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            f = open(self.path, "a")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self.file = f
            except BlockingIOError:
                f.close()
                held = False
        if not engine.agreed(held):
            raise ConfigError(
                f"{self.path.parent}: another gpmctl run is writing to this folder (it holds {self.path}); "
                "wait for it to end or choose another output_dir"
            )

    def release(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def open_run_folder(engine, output_dir: Path, recipe):
    """Start a run folder (every training job, once its inputs are known to be good): rank 0 writes recipe.yaml
    (the resolved recipe) and environment.json; every rank gets the run log (log.jsonl; rank 0 writes it)."""
    from gpmctl.config import dump_recipe
    from gpmctl.utils import RunLog, environment_report

    if engine.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "recipe.yaml").write_text(dump_recipe(recipe))
        (output_dir / "environment.json").write_text(json.dumps(environment_report(engine), indent=2))
    engine.wait()
    trackers = open_trackers(recipe, output_dir) if engine.is_main else []
    return RunLog(output_dir / "log.jsonl", enabled=engine.is_main, trackers=trackers)


def open_trackers(recipe, output_dir: Path) -> list:
    """accelerate's trackers for `train.report_to`, started under output_dir with the resolved recipe as their
    hyper-parameters. A tracker whose package is missing is a ConfigError naming it; wandb runs offline unless
    WANDB_MODE or WANDB_API_KEY is set (a batch job must not hang on a login or the network)."""
    import importlib.util

    from accelerate.tracking import MLflowTracker, TensorBoardTracker, WandBTracker

    from gpmctl.config import recipe_to_dict
    from gpmctl.config.sections import trackers
    from gpmctl.errors import ConfigError
    from gpmctl.utils import flatten, log

    names = trackers(recipe.train.report_to)
    for name in names:
        if importlib.util.find_spec(name) is None:  # each tracker's package has its name
            raise ConfigError(f"train.report_to: {name} needs its package: pip install {name}")
    if "wandb" in names and not os.environ.get("WANDB_MODE") and not os.environ.get("WANDB_API_KEY"):
        os.environ["WANDB_MODE"] = "offline"
        log(f"wandb: offline (no WANDB_MODE or WANDB_API_KEY); sync later with `wandb sync {output_dir / 'wandb'}`")
    project = output_dir.resolve().name
    made = {
        "tensorboard": lambda: TensorBoardTracker("tensorboard", output_dir),
        "wandb": lambda: WandBTracker(project, dir=str(output_dir)),
        "mlflow": lambda: MLflowTracker(experiment_name=project, logging_dir=str(output_dir / "mlruns")),
    }
    hyperparameters = {  # what trackers take: bools, numbers, strings, None
        key: value if value is None or isinstance(value, (bool, int, float, str)) else str(value)
        for key, value in flatten(recipe_to_dict(recipe)).items()
    }
    started = []
    for name in names:
        tracker = made[name]()
        tracker.start()
        tracker.store_init_configuration(hyperparameters)
        started.append(tracker)
    return started


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / CHECKPOINTS / f"step-{step:06d}"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(output_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name)) and (p / "trainer_state.json").is_file()]
    return [p for _, p in sorted(found)]


def save_checkpoint(path: Path, model: torch.nn.Module, optimizer, scheduler, state: dict) -> Path:
    from safetensors.torch import save_file, save_model

    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / "model.safetensors"))  # a tied weight (a policy's embeddings) is stored once
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            rng[f"cuda{i}"] = s
    save_file(rng, tmp / "rng.safetensors")
    version, internal, gauss = random.getstate()
    full_state = {**state, "scheduler": scheduler.state_dict(), "python_random": [version, list(internal), gauss]}
    write_trainer_state(tmp, full_state)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    return path


_UNREADABLE = (OSError, EOFError, ValueError, RuntimeError, KeyError, pickle.UnpicklingError)
"""What reading a damaged file raises besides safetensors' SafetensorError: a missing file (OSError),
torch.load of a cut archive (RuntimeError, EOFError, UnpicklingError), a state without its keys."""


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer, scheduler) -> dict:
    """Restore model, optimizer, scheduler and RNG in place; return the trainer state. Every file is read
    before anything is restored, so an UnreadableCheckpoint leaves the objects as they were."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        weights = load_file(path / "model.safetensors")
        optimizer_state = torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu")
        state = read_trainer_state(path)
        rng = load_file(path / "rng.safetensors")
        scheduler_state, python_random = state.pop("scheduler"), state.pop("python_random")
    except (*_UNREADABLE, SafetensorError) as e:
        raise UnreadableCheckpoint(f"{path}: unreadable ({type(e).__name__}: {first_line(e)})") from e
    _restore_weights(model, weights)
    optimizer.load_state_dict(optimizer_state)
    scheduler.load_state_dict(scheduler_state)
    version, internal, gauss = python_random
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(rng["torch"])
    cuda = [rng[k] for k in sorted(rng) if k.startswith("cuda")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    return state


def _restore_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """load_state_dict, strict except for the tied names that safetensors' save_model stored once."""
    missing, unexpected = model.load_state_dict(weights, strict=False)
    state = model.state_dict()
    saved_storage = {state[name].data_ptr() for name in weights if name in state}
    untied = [name for name in missing if state[name].data_ptr() not in saved_storage]
    if untied or unexpected:
        raise RuntimeError(f"checkpoint weights do not match the model: missing {untied[:3]}, unexpected {unexpected[:3]}")


def prune_checkpoints(output_dir: str | Path, keep: int) -> None:
    """Delete all but the `keep` newest checkpoints."""
    for old in list_checkpoints(output_dir)[: max(0, len(list_checkpoints(output_dir)) - keep)]:
        shutil.rmtree(old, ignore_errors=True)


def write_trainer_state(folder: Path, state: dict) -> None:
    (Path(folder) / "trainer_state.json").write_text(json.dumps(state, indent=2))


def read_trainer_state(path: Path) -> dict:
    try:
        state = json.loads((Path(path) / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # ValueError: bad JSON or bad UTF-8
        raise UnreadableCheckpoint(f"{path}: unreadable trainer_state.json ({type(e).__name__}: {first_line(e)})") from e
    if not isinstance(state, dict):
        raise UnreadableCheckpoint(f"{path}: trainer_state.json is not an object")
    return state
