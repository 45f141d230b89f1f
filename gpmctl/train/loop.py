"""Pieces shared by the training loops (train-rm and train-gpo): the accelerator, one optimizer step,
preemption, and the few collectives the loops need."""

from __future__ import annotations

import math
import os
import signal

import torch

from gpmctl.errors import EXIT_FAILURE, EXIT_PREEMPTED, ConfigError, GpmctlError


class Preempted(GpmctlError):
    """Stopped on request after saving a checkpoint; `--resume auto` continues."""

    exit_code = EXIT_PREEMPTED


class Diverged(GpmctlError):
    """The loss or gradient norm stopped being finite: the run ends without saving the weights."""

    exit_code = EXIT_FAILURE


class StopFlag:
    """SIGTERM / SIGUSR1 (cluster preemption) ask the loop to checkpoint and exit after the current step."""

    def __init__(self):
        self.signal: str | None = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, getattr(signal, "SIGUSR1", None)):
            if sig is not None:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signal = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def backward_step(accelerator, model, optimizer, loss, max_grad_norm: float, step: int):
    """Inside `accelerator.accumulate(model)`: backward, clip on the last micro-batch of optimizer step
    `step` (max_grad_norm 0: measure only), step (a no-op until then), zero the gradients. Returns the
    gradient norm on the last micro-batch, else None. A non-finite gradient norm raises Diverged before the
    update (DeepSpeed has stepped inside backward already; nothing is saved either way)."""
    accelerator.backward(loss)
    grad_norm = None
    if accelerator.sync_gradients:
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm if max_grad_norm > 0 else math.inf)
        _stop_if_not_finite(accelerator, loss, grad_norm, step)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


def _stop_if_not_finite(accelerator, loss, grad_norm, step: int) -> None:
    """One host sync per optimizer step, on the gradient norm every rank shares (a NaN loss on any rank
    makes it NaN). Under fp16 loss scaling (torch or DeepSpeed) an infinite norm is an overflow the scaler
    skips, so the loss is watched instead."""
    if accelerator.mixed_precision == "fp16":
        what, bad = "loss", any_rank(accelerator, not bool(torch.isfinite(loss.detach()).all()))
    elif grad_norm is not None:
        what, bad = "gradient norm", not math.isfinite(float(grad_norm))
    else:
        return
    if bad:
        raise Diverged(f"step {step}: the {what} is not finite (nan or inf); training stopped and saved nothing (lower "
                       "train.lr, or train.precision=fp32); the checkpoints written before, if any, are intact")  # fmt: skip


def keeps_fp32_master_weights(accelerator) -> bool:
    """DeepSpeed under bf16/fp16 mixed precision steps fp32 master copies of the weights in its optimizer;
    a torch optimizer (single process, DDP) steps the weights it is given."""
    return accelerator.state.deepspeed_plugin is not None and accelerator.mixed_precision in ("bf16", "fp16")


# ----------------------------------------------------------------------------------------------------
# Processes


def make_accelerator(precision: str, grad_accum: int, micro_batch: int, max_grad_norm: float, source: str = "recipe"):
    """The Accelerator of a training run: mixed precision (`auto`: bf16 on a bf16 GPU, fp32 on CPU, where
    bf16 is slower), gradient accumulation, and under DeepSpeed the recipe's batch and clipping (not the
    profile's). Returns (accelerator, precision actually used). `source`: the recipe file, for errors."""
    from accelerate import Accelerator

    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "fp16" and not torch.cuda.is_available():  # CPU autocast has no fp16 loss scaling: NaN weights
        raise ConfigError(f"{source}: train.precision: fp16 needs a CUDA GPU (there is none here); use bf16 or fp32")
    accelerator = Accelerator(mixed_precision={"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision],
                              gradient_accumulation_steps=grad_accum, **_cpu_settings())  # fmt: skip
    deepspeed = accelerator.state.deepspeed_plugin
    if deepspeed is not None:
        deepspeed.deepspeed_config.update(
            train_micro_batch_size_per_gpu=micro_batch, gradient_accumulation_steps=grad_accum,
            train_batch_size=micro_batch * grad_accum * accelerator.num_processes, gradient_clipping=max_grad_norm,
        )  # fmt: skip
    return accelerator, precision


def zero3_plugin(accelerator):
    """The DeepSpeed plugin when it runs ZeRO stage 3 (parameters sharded over the ranks), else None."""
    plugin = accelerator.state.deepspeed_plugin
    return plugin if plugin is not None and plugin.zero_stage == 3 else None


def _cpu_settings() -> dict:
    """Accelerator arguments on a machine without CUDA: an explicit gloo group for DeepSpeed (accelerate
    leaves it without a backend there, so each rank thinks it is alone), and cpu=True for DDP (otherwise
    N processes under torchrun train N independent models)."""
    if torch.cuda.is_available():
        return {}
    from accelerate.utils import InitProcessGroupKwargs

    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() in ("1", "true"):
        import logging
        import warnings

        import deepspeed.ops

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # skip a 30 s JIT build; gloo does the work
        logging.getLogger("DeepSpeed").setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")
        return {"kwargs_handlers": [InitProcessGroupKwargs(backend="gloo")]}
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under torchrun without ACCELERATE_USE_CPU=1 too
        return {"cpu": True}
    return {}


def built_whole(build, deepspeed_plugin):
    """Run `build` with transformers' ZeRO-3 sharded init switched off (accelerate's own
    zero3_init_context_manager leaves it on: it re-registers the same stage-3 config). Needed for a
    model one rank builds alone, a model every rank needs whole (a sampler, a judge), and for the seeded
    tiny model to equal a single-process run's."""
    if deepspeed_plugin is None:
        return build()
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    try:
        return build()
    finally:
        deepspeed_plugin.set_deepspeed_weakref()


def agreed(accelerator, flag: bool) -> bool:
    """Rank 0's value of `flag` on every rank."""
    if accelerator.num_processes == 1:
        return flag
    from accelerate.utils import broadcast

    return bool(broadcast(torch.tensor([int(flag)], device=accelerator.device), from_process=0).item())


def any_rank(accelerator, flag: bool) -> bool:
    if accelerator.num_processes == 1:
        return flag
    return bool(accelerator.reduce(torch.tensor([int(flag)], device=accelerator.device), reduction="sum").item() > 0)


def shard_map(accelerator, items: list, fn, block: int = 1) -> list:
    """fn(list of items) -> list of results, one per item, computed on blocks of `block` items dealt round
    robin over the ranks (block b on rank b % world); every rank gets all results in item order."""
    rank, world = accelerator.process_index, accelerator.num_processes
    mine = []
    for b, start in enumerate(range(0, len(items), block)):
        if b % world == rank:
            mine += list(zip(range(start, start + block), fn(items[start : start + block], b)))
    if world == 1:
        return [result for _, result in mine]
    from accelerate.utils import gather_object

    gathered = sorted(gather_object(mine), key=lambda pair: pair[0])
    return [result for _, result in gathered]
