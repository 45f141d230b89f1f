"""Resumable training checkpoints: everything needed to continue a run bit for bit.

    <output_dir>/checkpoints/step-000120/
        model.safetensors      the trainable module's state (PreferenceModel names)
        optimizer.pt           optimizer state, read back with torch.load(weights_only=True): no unpickling
        rng.safetensors        torch CPU (and CUDA) generator states
        trainer_state.json     step, epoch, position in the epoch, best metric, scheduler state, Python RNG

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
