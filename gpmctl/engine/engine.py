"""The engine of a training run: accelerate, with DeepSpeed ZeRO when the launch profile asks for it.

Everything that differs between one process, DDP and ZeRO-2/3 lives here, so that the training loop
(gpmctl/train/loop.py) and the jobs (train-rm, train-gpo) never ask which one runs:

    engine = Engine.create(precision, grad_accum, micro_batch, max_grad_norm)   # from the launcher's environment
    model = engine.build(lambda: build_model(...), shard=True)   # ZeRO-3: a hub backbone loads sharded
    model, optimizer = engine.prepare(model, optimizer)
    with engine.accumulate(model):
        grad_norm = engine.backward_step(model, optimizer, loss, max_grad_norm, step)
    engine.save_state(folder, model, optimizer, scheduler, state)            # whole files, or every rank's shard
    weights = engine.full_state_dict(model)                                  # gathered from the ZeRO-3 shards

`Engine.local()` is the same interface over plain torch in this process (no accelerate), for models trained
outside a run's engine: a frozen backbone's head on cached features, the tiny GPO policy's warm-up.

Checkpoint layouts: a torch engine (one process, DDP) writes the whole model and optimizer
(gpmctl/train/checkpoint.py), so a run continues on any number of processes with the same global batch;
under DeepSpeed each rank writes its shard through accelerate's `save_state` into `engine/`, and a run
continues only with the same engine, stage and world size (`check_resumable`).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
from pathlib import Path

import torch

from gpmctl.errors import EXIT_FAILURE, ConfigError, GpmctlError


class Diverged(GpmctlError):
    """The loss or gradient norm stopped being finite: the run ends without saving the weights."""

    exit_code = EXIT_FAILURE


class RankError(GpmctlError):
    """A gpmctl error that another process of the run met, raised on this one too (its message and exit code), so
    that every process stops at the same point and none waits forever in a collective."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class Engine:
    """One run's processes and how a model is stepped, saved and gathered across them."""

    def __init__(self, accelerator=None, precision: str = "fp32", grad_accum: int = 1, device: str | torch.device = "cpu"):
        self.accelerator = accelerator
        self.precision = precision
        self._grad_accum = grad_accum
        self._device = torch.device(device)
        self._micro_batches = 0  # local engine: micro-batches seen, for gradient accumulation

    # ------------------------------------------------------------------------------------------------
    # Construction

    @classmethod
    def create(cls, precision: str, grad_accum: int, micro_batch: int, max_grad_norm: float, source: str = "recipe") -> "Engine":
        """The engine of a training run: mixed precision (`auto`: bf16 on a bf16 GPU, fp32 on CPU, where bf16
        is slower), gradient accumulation, and under DeepSpeed the recipe's batch and clipping (not the
        profile's). `source`: the recipe file, for errors."""
        from accelerate import Accelerator

        if precision == "auto":
            precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
        if precision == "fp16" and not torch.cuda.is_available():  # CPU autocast has no fp16 loss scaling: NaN weights
            raise ConfigError(f"{source}: train.precision: fp16 needs a CUDA GPU (there is none here); use bf16 or fp32")
        accelerator = Accelerator(
            mixed_precision={"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision],
            gradient_accumulation_steps=grad_accum,
            **_cpu_settings(),
        )
        plugin = accelerator.state.deepspeed_plugin
        if plugin is not None:
            plugin.deepspeed_config.update(
                train_micro_batch_size_per_gpu=micro_batch,
                gradient_accumulation_steps=grad_accum,
                train_batch_size=micro_batch * grad_accum * accelerator.num_processes,
                gradient_clipping=max_grad_norm,
            )
        return cls(accelerator, precision, grad_accum)

    @classmethod
    def local(cls, grad_accum: int = 1, device: str | torch.device = "cpu") -> "Engine":
        """Plain torch in this process, fp32: the same steps as an accelerate engine of one process."""
        return cls(None, "fp32", grad_accum, device)

    @classmethod
    def inference(cls, device: str | torch.device) -> "Engine":
        """The processes of a scoring command (score, eval): under a launcher of several processes, accelerate's
        process group with each process on its own GPU (or the CPU); otherwise plain torch on `device`."""
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls.local(device=device)
        from accelerate import Accelerator

        return cls(Accelerator(**_cpu_settings()))

    # ------------------------------------------------------------------------------------------------
    # What runs

    @property
    def device(self) -> torch.device:
        return self.accelerator.device if self.accelerator else self._device

    @property
    def rank(self) -> int:
        return self.accelerator.process_index if self.accelerator else 0

    @property
    def world(self) -> int:
        return self.accelerator.num_processes if self.accelerator else 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def _deepspeed(self):
        return self.accelerator.state.deepspeed_plugin if self.accelerator else None

    @property
    def sharded(self) -> bool:
        """Each rank holds a shard of the optimizer state (and of the weights under stage 3): DeepSpeed ZeRO."""
        return self._deepspeed is not None

    @property
    def shards_weights(self) -> bool:
        """The weights themselves are cut over the ranks (ZeRO stage 3)."""
        return self.sharded and self._deepspeed.zero_stage == 3

    @property
    def keeps_fp32_master_weights(self) -> bool:
        """DeepSpeed under bf16/fp16 mixed precision steps fp32 master copies of the weights in its optimizer;
        a torch optimizer (single process, DDP) steps the weights it is given."""
        return self.sharded and self.accelerator.mixed_precision in ("bf16", "fp16")

    def describe(self) -> str:
        """`torch` or `DeepSpeed ZeRO-N`, for log lines and error messages."""
        return f"DeepSpeed ZeRO-{self._deepspeed.zero_stage}" if self.sharded else "torch"

    def environment(self) -> dict:
        """The run's process layout for environment.json."""
        if not self.accelerator:
            return {"device": str(self.device), "num_processes": 1, "distributed_type": "local", "mixed_precision": "no"}
        a = self.accelerator
        return {
            "device": str(a.device),
            "num_processes": a.num_processes,
            "distributed_type": str(a.distributed_type),
            "mixed_precision": a.mixed_precision,
        }

    # ------------------------------------------------------------------------------------------------
    # Models

    def build(self, build, shard: bool = False):
        """Run `build()` (which makes a model). Under ZeRO-3 transformers' `from_pretrained` loads each rank's
        shard only when `shard` is set; otherwise the model is built whole on every rank that calls this,
        as a model one rank builds alone, a model every rank needs whole (a sampler, a judge) or a seeded
        random model that must equal a single-process run's needs (accelerate's own zero3 init context would
        leave sharded init on: it re-registers the same stage-3 config)."""
        if shard or not self.shards_weights:
            return build()
        from transformers.integrations import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()
        try:
            return build()
        finally:
            self._deepspeed.set_deepspeed_weakref()

    def weights_dtype(self, name: str) -> torch.dtype:
        """The dtype of weights an optimizer will update (gpmctl.models.build.training_dtype)."""
        from gpmctl.models.build import training_dtype

        return training_dtype(name, self.device, self.keeps_fp32_master_weights)

    def prepare(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
        if not self.accelerator:
            return model.to(self.device), optimizer
        return self.accelerator.prepare(model, optimizer)

    def unwrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model inside DDP's / DeepSpeed's wrapper."""
        return self.accelerator.unwrap_model(model) if self.accelerator else model

    def parameter_count(self, model: torch.nn.Module) -> int:
        return sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())  # ds_numel: a ZeRO-3 shard's full size

    def full_state_dict(self, model: torch.nn.Module) -> dict | None:
        """The whole model's weights gathered from the ZeRO-3 shards (a collective: every rank calls it; rank 0
        gets them), or None where every rank holds the whole model already."""
        return self.accelerator.get_state_dict(model) if self.shards_weights else None

    def model_to_save(self, model: torch.nn.Module):
        """The unwrapped model with all its weights on rank 0 (gathered from the ZeRO-3 shards into a copy built on
        the meta device, so no second copy of the initial weights is made); None on the other ranks. A collective."""
        full = self.full_state_dict(model)
        unwrapped = self.unwrap(model)
        if full is None:
            return unwrapped
        if not self.is_main:
            return None
        from gpmctl.models.model import PreferenceModel

        with torch.device("meta"):
            skeleton = PreferenceModel(type(unwrapped.backbone)(unwrapped.backbone.config), unwrapped.head)
        skeleton.load_state_dict({k: v.detach().cpu() for k, v in full.items()}, assign=True)
        return skeleton

    def free_memory(self) -> None:
        if self.accelerator:
            self.accelerator.free_memory()

    # ------------------------------------------------------------------------------------------------
    # Steps

    @contextlib.contextmanager
    def accumulate(self, model: torch.nn.Module):
        """One micro-batch; `sync_gradients` is true on the last micro-batch of an optimizer step."""
        if self.accelerator:
            with self.accelerator.accumulate(model):
                yield
            return
        self._micro_batches += 1
        yield

    @property
    def sync_gradients(self) -> bool:
        if self.accelerator:
            return self.accelerator.sync_gradients
        return self._micro_batches % self._grad_accum == 0

    def autocast(self):
        return self.accelerator.autocast() if self.accelerator else contextlib.nullcontext()

    def backward_step(self, model, optimizer, loss: torch.Tensor, max_grad_norm: float, step: int):
        """Inside `accumulate(model)`: backward, and on the last micro-batch of optimizer step `step` clip
        (max_grad_norm 0: measure only), step and zero the gradients. Returns the gradient norm on the last
        micro-batch, else None. A non-finite gradient norm raises Diverged before the update (DeepSpeed has
        stepped inside backward already; nothing is saved either way)."""
        limit = max_grad_norm if max_grad_norm > 0 else math.inf
        if not self.accelerator:
            (loss / self._grad_accum).backward()  # as accelerate scales a micro-batch's loss
            if not self.sync_gradients:
                return None
            grad_norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], limit)
            self._stop_if_not_finite(loss, grad_norm, step)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return grad_norm
        self.accelerator.backward(loss)
        grad_norm = None
        if self.accelerator.sync_gradients:
            grad_norm = self.accelerator.clip_grad_norm_(model.parameters(), limit)
            self._stop_if_not_finite(loss, grad_norm, step)
        optimizer.step()  # accelerate's optimizer steps (and zeroes) on the last micro-batch only
        optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def _stop_if_not_finite(self, loss: torch.Tensor, grad_norm, step: int) -> None:
        """One host sync per optimizer step, on the gradient norm every rank shares (a NaN loss on any rank
        makes it NaN). Under fp16 loss scaling (torch or DeepSpeed) an infinite norm is an overflow the scaler
        skips, so the loss is watched instead."""
        if self.accelerator and self.accelerator.mixed_precision == "fp16":
            what, bad = "loss", self.any_rank(not bool(torch.isfinite(loss.detach()).all()))
        elif grad_norm is not None:
            what, bad = "gradient norm", not math.isfinite(float(grad_norm))
        else:
            return
        if bad:
            raise Diverged(
                f"step {step}: the {what} is not finite (nan or inf); training stopped and saved nothing (lower "
                "train.lr, or train.precision=fp32); the checkpoints written before, if any, are intact"
            )

    # ------------------------------------------------------------------------------------------------
    # Checkpoints

    def layout(self, batch_size: int, grad_accum: int) -> dict:
        """What a checkpoint records of the processes that wrote it (see `check_resumable`)."""
        return {
            "world_size": self.world,
            "engine": "deepspeed" if self.sharded else "torch",
            "zero_stage": self._deepspeed.zero_stage if self.sharded else None,
            "batch_size": batch_size,
            "grad_accum": grad_accum,
        }

    @staticmethod
    def check_resumable(saved: dict, current: dict, path: Path) -> None:
        """Raise ConfigError when a checkpoint written with layout `saved` cannot continue as `current`.

        A torch checkpoint holds the full model and optimizer, so it continues on any number of processes as
        long as the global batch (batch_size x grad_accum x world_size) is unchanged: each step then sees the
        same pairs. A ZeRO checkpoint is cut into one shard per rank and needs the same engine, stage and
        world size."""
        if "world_size" not in saved:  # written before layouts were recorded: single process, torch
            saved = {
                **saved,
                "world_size": 1,
                "engine": "torch",
                "batch_size": current["batch_size"],
                "grad_accum": current["grad_accum"],
            }
        was, now = saved["world_size"], current["world_size"]
        if saved.get("engine", "torch") != current["engine"] or saved.get("zero_stage") != current["zero_stage"]:

            def name(d):
                return f"DeepSpeed ZeRO-{d.get('zero_stage')}" if d.get("engine") == "deepspeed" else "a torch (single/DDP) run"

            raise ConfigError(
                f"{path}: written by {name(saved)}, this run is {name(current)}; resume with the launch profile "
                "that wrote it (launch.profile=...) or start again with --overwrite"
            )
        if current["engine"] == "deepspeed" and was != now:
            raise ConfigError(
                f"{path}: a ZeRO checkpoint written by {was} processes cannot be resumed by {now}; "
                f"run with launch.num_processes={was} (or convert it with DeepSpeed's zero_to_fp32 and start a new run)"
            )
        global_was = saved["batch_size"] * saved["grad_accum"] * was
        global_now = current["batch_size"] * current["grad_accum"] * now
        if global_was != global_now:
            raise ConfigError(
                f"{path}: written with a global batch of {global_was} pairs ({saved['batch_size']} x {saved['grad_accum']} x "
                f"{was} processes), this run has {global_now} ({current['batch_size']} x {current['grad_accum']} x {now}); "
                "set train.batch_size / train.grad_accum so the global batch matches, or start again with --overwrite"
            )

    def save_state(self, path: Path, model, optimizer, scheduler, state: dict) -> Path:
        """A resumable checkpoint folder (written under a temporary name, renamed when complete): the whole model
        and optimizer from rank 0 (gpmctl.train.checkpoint), or under DeepSpeed every rank's shard in engine/."""
        from gpmctl.train import checkpoint as ckpt

        if not self.sharded:
            if self.is_main:
                ckpt.save_checkpoint(path, self.unwrap(model), optimizer, scheduler, state)
            self.wait()
            return path
        tmp = path.with_name(path.name + ".tmp")
        if self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.wait()
        self.accelerator.save_state(str(tmp / "engine"), safe_serialization=True)
        self.wait()
        if self.is_main:
            ckpt.write_trainer_state(tmp, {**state, "scheduler": scheduler.state_dict()})
            shutil.rmtree(path, ignore_errors=True)
            os.replace(tmp, path)
        self.wait()
        return path

    def load_state(self, path: Path, model, optimizer, scheduler) -> dict:
        """Restore what `save_state` wrote; return the trainer state (UnreadableCheckpoint if it does not read back)."""
        from gpmctl.train import checkpoint as ckpt

        saved = ckpt.read_trainer_state(path)
        if saved.get("engine") != "deepspeed":
            return ckpt.load_checkpoint(path, self.unwrap(model), optimizer, scheduler)
        self.accelerator.load_state(str(Path(path) / "engine"))
        scheduler.load_state_dict(saved.pop("scheduler"))
        return saved

    # ------------------------------------------------------------------------------------------------
    # Processes

    def wait(self) -> None:
        if self.accelerator:
            self.accelerator.wait_for_everyone()

    def agreed(self, flag: bool) -> bool:
        """Rank 0's value of `flag` on every rank."""
        if self.world == 1:
            return flag
        from accelerate.utils import broadcast

        return bool(broadcast(torch.tensor([int(flag)], device=self.device), from_process=0).item())

    def any_rank(self, flag: bool) -> bool:
        if self.world == 1:
            return flag
        return bool(self.accelerator.reduce(torch.tensor([int(flag)], device=self.device), reduction="sum").item() > 0)

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's `tensor`, concatenated in rank order along the first dimension."""
        return self.accelerator.gather(tensor) if self.world > 1 else tensor

    def shard_map(self, items: list, fn, block: int = 1) -> list:
        """fn(list of items, block index) -> list of results, one per item, computed on blocks of `block` items
        dealt round robin over the ranks (block b on rank b % world); every rank gets all results in item order.
        A gpmctl error in a block is raised on every rank (that of the first such block)."""
        blocks = list(enumerate(range(0, len(items), block)))
        if self.world == 1:
            return [result for b, start in blocks for result in fn(items[start : start + block], b)]
        from accelerate.utils import gather_object

        mine, error = [], None  # ("result", item index, result) ..., or one ("error", block, (exit code, message))
        for b, start in blocks[self.rank :: self.world]:
            try:
                mine += [("result", start + i, r) for i, r in enumerate(fn(items[start : start + block], b))]
            except GpmctlError as e:
                mine, error = [("error", b, (e.exit_code, str(e)))], e
                break
        gathered = sorted(gather_object(mine), key=lambda entry: (entry[0], entry[1]))  # "error" sorts first
        if gathered and gathered[0][0] == "error":
            if error is not None and mine[0] == gathered[0]:
                raise error
            code, message = gathered[0][2]
            raise RankError(message, code)
        return [result for _, _, result in gathered]

    def from_main(self, produce):
        """`produce()` run on rank 0, its value on every rank; a gpmctl error it raises is raised on every rank."""
        if self.world == 1:
            return produce()
        from accelerate.utils import broadcast_object_list

        payload, error = [None], None
        if self.is_main:
            try:
                payload = [("value", produce())]
            except GpmctlError as e:
                payload, error = [("error", e.exit_code, str(e))], e
        kind, *rest = broadcast_object_list(payload, from_process=0)[0]
        if error is not None:
            raise error
        if kind == "error":
            raise RankError(rest[1], rest[0])
        return rest[0]

    def total(self, count: int) -> int:
        """The sum of `count` over the ranks."""
        if self.world == 1:
            return count
        return int(self.accelerator.reduce(torch.tensor([count], device=self.device), reduction="sum").item())


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
