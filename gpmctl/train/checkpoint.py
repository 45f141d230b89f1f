"""Resumable training checkpoints: everything needed to continue a run bit for bit.

    <output_dir>/checkpoints/step-000120/
        model.safetensors      the trainable module's state (PreferenceModel names)
        optimizer.pt           optimizer state, read back with torch.load(weights_only=True): no unpickling
        rng.safetensors        torch CPU (and CUDA) generator states
        trainer_state.json     step, epoch, position in the epoch, best metric, scheduler state, Python RNG

Under DeepSpeed (ZeRO-2/3) the model and optimizer are sharded over the ranks, so the folder holds
accelerate's `save_state` output instead of model.safetensors / optimizer.pt / rng.safetensors:

        engine/                ZeRO shards of every rank (pytorch_model/), per-rank RNG states
        trainer_state.json     as above, with "engine": "deepspeed"

trainer_state.json also records the layout that wrote it (world_size, batch_size, grad_accum, engine):
`check_resumable` says in one line when a run cannot continue from it.

A checkpoint folder is written under a temporary name and renamed when complete, so a preempted save
never leaves a checkpoint that looks finished.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import torch

from gpmctl.errors import ConfigError

CHECKPOINTS = "checkpoints"
_NAME = re.compile(r"^step-(\d+)$")


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
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, tmp / "model.safetensors")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            rng[f"cuda{i}"] = s
    save_file(rng, tmp / "rng.safetensors")
    version, internal, gauss = random.getstate()
    full_state = {**state, "scheduler": scheduler.state_dict(), "python_random": [version, list(internal), gauss]}
    (tmp / "trainer_state.json").write_text(json.dumps(full_state, indent=2))
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer, scheduler) -> dict:
    """Restore model, optimizer, scheduler and RNG in place; return the trainer state."""
    from safetensors.torch import load_file

    model.load_state_dict(load_file(path / "model.safetensors"))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu"))
    state = json.loads((path / "trainer_state.json").read_text())
    scheduler.load_state_dict(state.pop("scheduler"))
    version, internal, gauss = state.pop("python_random")
    random.setstate((version, tuple(internal), gauss))
    rng = load_file(path / "rng.safetensors")
    torch.set_rng_state(rng["torch"])
    cuda = [rng[k] for k in sorted(rng) if k.startswith("cuda")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    return state


def prune_checkpoints(output_dir: str | Path, keep: int) -> None:
    """Delete all but the `keep` newest checkpoints."""
    for old in list_checkpoints(output_dir)[: max(0, len(list_checkpoints(output_dir)) - keep)]:
        shutil.rmtree(old, ignore_errors=True)


def read_trainer_state(path: Path) -> dict:
    return json.loads((Path(path) / "trainer_state.json").read_text())


def check_resumable(saved: dict, current: dict, path: Path) -> None:
    """Raise ConfigError when a checkpoint written with layout `saved` cannot continue as `current`.

    Layout keys: world_size, engine (torch | deepspeed), zero_stage, batch_size, grad_accum. A torch
    checkpoint holds the full model and optimizer, so it continues on any number of processes as long as
    the global batch (batch_size x grad_accum x world_size) is unchanged: each step then sees the same
    pairs. A ZeRO checkpoint is cut into one shard per rank and needs the same engine, stage and world size.
    """
    if "world_size" not in saved:  # written before layouts were recorded: single process, torch
        saved = {**saved, "world_size": 1, "engine": "torch", "batch_size": current["batch_size"], "grad_accum": current["grad_accum"]}
    was, now = saved["world_size"], current["world_size"]
    if saved.get("engine", "torch") != current["engine"] or saved.get("zero_stage") != current["zero_stage"]:
        def name(d):
            return f"DeepSpeed ZeRO-{d.get('zero_stage')}" if d.get("engine") == "deepspeed" else "a torch (single/DDP) run"

        raise ConfigError(f"{path}: written by {name(saved)}, this run is {name(current)}; resume with the launch profile "
                          "that wrote it (launch.profile=...) or start again with --overwrite")  # fmt: skip
    if current["engine"] == "deepspeed" and was != now:
        raise ConfigError(f"{path}: a ZeRO checkpoint written by {was} processes cannot be resumed by {now}; "
                          f"run with launch.num_processes={was} (or convert it with DeepSpeed's zero_to_fp32 and start a new run)")  # fmt: skip
    global_was = saved["batch_size"] * saved["grad_accum"] * was
    global_now = current["batch_size"] * current["grad_accum"] * now
    if global_was != global_now:
        raise ConfigError(f"{path}: written with a global batch of {global_was} pairs ({saved['batch_size']} x {saved['grad_accum']} x "
                          f"{was} processes), this run has {global_now} ({current['batch_size']} x {current['grad_accum']} x {now}); "
                          "set train.batch_size / train.grad_accum so the global batch matches, or start again with --overwrite")  # fmt: skip


def save_sharded_checkpoint(path: Path, accelerator, scheduler, state: dict) -> Path:
    """DeepSpeed: every rank writes its shard through accelerate; rank 0 adds trainer_state.json and renames."""
    tmp = path.with_name(path.name + ".tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp / "engine"), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / "trainer_state.json").write_text(json.dumps({**state, "scheduler": scheduler.state_dict()}, indent=2))
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    accelerator.wait_for_everyone()
    return path


def load_sharded_checkpoint(path: Path, accelerator, scheduler) -> dict:
    accelerator.load_state(str(Path(path) / "engine"))
    state = read_trainer_state(path)
    scheduler.load_state_dict(state.pop("scheduler"))
    return state
