"""`gpmctl train-rm`: train a Bradley-Terry reward model or a General Preference Model.

The recipe, top to bottom:
  1. prepare the run folder (resolved recipe, environment report) or find the checkpoint to resume
  2. read and tokenise the preference pairs (held-out split by prompt when no eval file is given)
  3. build the model, AdamW, the warmup + cosine schedule, and hand them to accelerate
  4. loop: one forward pass per batch of pairs ([chosen; rejected] stacked; packed into one row
     without padding where the backbone allows, `train.packing`), preference loss, gradient
     accumulation and clipping; log, evaluate, keep the best, checkpoint
  5. save the final model as a folder every other gpmctl command accepts as --model
"""

from __future__ import annotations

import hashlib
import json
import functools
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gpmctl.config import Recipe, dump_recipe
from gpmctl.data.tokenize import EncodedPair, SequenceEncoder, collate_pairs, real_tokens
from gpmctl.errors import ConfigError, GpmctlError
from gpmctl.models import preference as P
from gpmctl.models.loading import build_model, load_tokenizer, save_model
from gpmctl.models.reward_model import HEAD_FILE, PreferenceModel
from gpmctl.train import checkpoint as ckpt
from gpmctl.train.loop import Preempted, StopFlag, agreed, any_rank, backward_step, built_whole, make_accelerator, zero3_plugin  # noqa: F401  (Preempted: re-exported)
from gpmctl.utils import RunLog, environment_report, log, quiet_libraries


@dataclass
class TrainResult:
    output_dir: Path
    steps: int
    final_metrics: dict = field(default_factory=dict)  # eval metrics of the saved model
    best_metrics: dict | None = None


# ----------------------------------------------------------------------------------------------------
# Data


def split_by_prompt(records: list, eval_fraction: float, seed: int) -> tuple[list, list]:
    """Deterministic held-out split in which a prompt never sits on both sides."""
    if eval_fraction <= 0:
        return records, []
    train, held = [], []
    for r in records:
        key = json.dumps(r.prompt, sort_keys=True, ensure_ascii=False) + f"#{seed}"
        u = int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big") / 2**64
        (held if u < eval_fraction else train).append(r)
    return train, held


def load_pairs(recipe: Recipe, encoder: SequenceEncoder) -> tuple[list[EncodedPair], list[EncodedPair]]:
    from gpmctl.data.sources import read_source

    d, t = recipe.data, recipe.train
    train_records = list(read_source(d.train, limit=d.max_samples))
    if not train_records:
        raise GpmctlError(f"{d.train}: no preference pairs")
    if d.eval:
        eval_records = list(read_source(d.eval))
    else:
        train_records, eval_records = split_by_prompt(train_records, d.eval_fraction, t.seed)

    def encode(records, path):
        return [encoder.encode_pair(r, f"{path}:{i + 1}", t.use_margin, t.use_soft_labels) for i, r in enumerate(records)]

    train = encode(train_records, d.train)
    held = encode(eval_records, d.eval or d.train)
    if encoder.truncated:
        log(f"{encoder.truncated} sequences were longer than data.max_length={d.max_length} and were cut ({d.truncation})")
    return train, held


MEGA_BATCH_STEPS = 8
"""Length grouping sorts this many consecutive batches together (64 pairs at batch 8; on
realistic length spreads that cut the padding of random batches from 37% to 24%)."""


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1,
                  lengths: list[int] | None = None) -> list[list[int]]:  # fmt: skip
    """This rank's micro-batches of one epoch: a permutation seeded by (seed, epoch), so a resumed run
    sees exactly the batches the interrupted one would have seen. Every rank gets the same count.
    With `lengths` (one per pair) the batches are length-grouped (`_length_grouped`)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=g).tolist()
    per_step = batch_size * world
    steps = n // per_step if world > 1 else math.ceil(n / batch_size)
    if lengths is None:
        global_batches = [order[s * per_step : (s + 1) * per_step] for s in range(steps)]
    else:
        global_batches = _length_grouped(order, lengths, per_step, g)[:steps]
    return [batch[rank::world] for batch in global_batches]


def _length_grouped(order: list[int], lengths: list[int], per_step: int, generator: torch.Generator) -> list[list[int]]:
    """`order` cut into mega-batches of MEGA_BATCH_STEPS global batches, each sorted by length (longest
    first) and cut into batches; the full batches are then shuffled (a short last batch stays last)."""
    mega = per_step * MEGA_BATCH_STEPS
    batches = []
    for start in range(0, len(order), mega):
        chunk = sorted(order[start : start + mega], key=lambda i: -lengths[i])
        batches += [chunk[i : i + per_step] for i in range(0, len(chunk), per_step)]
    short = [b for b in batches if len(b) < per_step]
    full = [b for b in batches if len(b) == per_step]
    return [full[i] for i in torch.randperm(len(full), generator=generator).tolist()] + short


# ----------------------------------------------------------------------------------------------------
# Loss and evaluation


def pair_loss(model: PreferenceModel, batch: dict, tau: float, use_margin: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward over [chosen; rejected] (padded or packed) -> (mean loss, per-pair scores s(chosen > rejected) [B])."""
    out = model(batch["input_ids"], batch.get("attention_mask"), batch["prompt_end"], batch.get("cu_seqlens"))
    kind = getattr(model, "module", model).head.kind  # DDP and DeepSpeed wrap the PreferenceModel as .module
    half = batch["margin"].shape[0]
    split = lambda x: (x[:half], x[half:]) if x is not None else (None, None)  # noqa: E731
    (vc, vr), (gc, gr) = split(out.value), split(out.gate)
    gate = None if gc is None else P.prompt_gate(torch.stack([gc, gr], dim=-2))
    score = P.bt_score(vc, vr) if kind == "bt" else P.preference_score(vc, vr, gate)
    label = batch["label"]
    loss = P.preference_loss(score, tau, batch["margin"] if use_margin else None, None if bool((label == 1).all()) else label)
    return loss.mean(), score.detach()


@torch.no_grad()
def evaluate(model, pairs: list[EncodedPair], batch_size: int, tau: float, collate, accelerator) -> dict:
    """Pair accuracy (s > 0 strictly: ties count wrong), mean P(chosen > rejected), loss; by `kind` if present.
    `collate` turns a list of pairs into a batch (padded or packed, as in training)."""
    if not pairs:
        return {}
    was_training = model.training
    model.eval()
    rank, world = accelerator.process_index, accelerator.num_processes
    mine = list(range(rank, len(pairs), world))
    per_rank = math.ceil(len(pairs) / world)
    scores = torch.full((per_rank,), float("nan"))
    for start in range(0, len(mine), batch_size):
        idx = mine[start : start + batch_size]
        batch = {k: v.to(accelerator.device) for k, v in collate([pairs[i] for i in idx]).items()}
        _, s = pair_loss(model, batch, tau, use_margin=False)
        scores[start : start + len(idx)] = s.float().cpu()
    gathered = accelerator.gather(scores.to(accelerator.device)).cpu().view(world, per_rank)
    # Undo the round-robin sharding: row r holds pairs r, r + world, ...
    ordered = gathered.t().reshape(-1)[: len(pairs)]
    model.train(was_training)
    return pair_metrics(ordered, tau, [p.meta for p in pairs])


def pair_metrics(scores: torch.Tensor, tau: float, metas: list[dict | None] | None = None) -> dict:
    s = scores.double()
    metrics = {
        "accuracy": float((s > 0).double().mean()),
        "mean_prob": float(torch.sigmoid(s / tau).mean()),
        "loss": float(-torch.nn.functional.logsigmoid(s / tau).mean()),
        "pairs": len(s),
    }
    kinds = [m.get("kind") for m in metas] if metas and all(m for m in metas) else None
    if kinds and any(kinds):
        for kind in sorted({k for k in kinds if k}):
            sel = torch.tensor([k == kind for k in kinds])
            metrics[f"accuracy/{kind}"] = float((s[sel] > 0).double().mean())
    return metrics


# ----------------------------------------------------------------------------------------------------
# The run


def _decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases and norm weights (as the reference)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "norm" in name.lower() or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def optimisation(model: torch.nn.Module, t, micro_per_epoch: int, n_train: int) -> tuple[int, int, torch.optim.Optimizer, object]:
    """AdamW (no decay on biases and norms) and the warmup + decay schedule of a train-rm run
    -> (optimizer steps per epoch, total steps, optimizer, scheduler)."""
    from transformers import get_scheduler

    steps_per_epoch = micro_per_epoch // t.grad_accum
    if steps_per_epoch == 0:
        raise ConfigError(f"train.batch_size x train.grad_accum x processes exceeds the {n_train} training pairs")
    total_steps = t.max_steps or math.ceil(t.epochs * steps_per_epoch)
    optimizer = torch.optim.AdamW(_decay_groups(model, t.weight_decay), lr=t.lr, betas=t.adam_betas)
    scheduler = get_scheduler(t.scheduler if t.scheduler != "constant" else "constant_with_warmup", optimizer,
                              num_warmup_steps=math.ceil(t.warmup_ratio * total_steps), num_training_steps=total_steps)  # fmt: skip
    return steps_per_epoch, total_steps, optimizer, scheduler


def _resume_point(output_dir: Path, resume: str | None) -> Path | None:
    if resume in (None, "none"):
        if ckpt.list_checkpoints(output_dir) or (output_dir / HEAD_FILE).exists():
            raise ConfigError(
                f"{output_dir}: already holds a run; pass --resume auto to continue it or --overwrite to start again"
            )
        return None
    if resume == "auto":
        found = ckpt.list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / "trainer_state.json").is_file():
        raise ConfigError(f"{resume}: not a checkpoint folder (no trainer_state.json)")
    return path


def train_reward_model(recipe: Recipe, resume: str | None = None, overwrite: bool = False, stop_after_steps: int | None = None) -> TrainResult:
    from accelerate.utils import set_seed

    m, d, t = recipe.model, recipe.data, recipe.train
    quiet_libraries()
    output_dir = Path(recipe.output_dir)
    if overwrite and resume not in (None, "none"):
        raise ConfigError("--overwrite and --resume exclude each other")
    if overwrite:
        import shutil

        shutil.rmtree(output_dir / ckpt.CHECKPOINTS, ignore_errors=True)
        (output_dir / HEAD_FILE).unlink(missing_ok=True)
    resume_from = _resume_point(output_dir, resume)

    accelerator, precision = make_accelerator(t.precision, t.grad_accum, t.batch_size, t.max_grad_norm)
    main = accelerator.is_main_process
    deepspeed = accelerator.state.deepspeed_plugin
    zero3 = zero3_plugin(accelerator) is not None
    set_seed(t.seed)

    # 1. The run folder.
    if main:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "recipe.yaml").write_text(dump_recipe(recipe))
        (output_dir / "environment.json").write_text(json.dumps(environment_report(accelerator), indent=2))
    runlog = RunLog(output_dir / "log.jsonl", enabled=main)

    # 2. Data.
    tokenizer = load_tokenizer(m.tokenizer or m.backbone, m.trust_remote_code)
    encoder = SequenceEncoder(tokenizer, d.max_length, m.eos, m.gate_prompt, d.truncation)
    started = time.perf_counter()
    train_pairs, eval_pairs = load_pairs(recipe, encoder)
    log(f"data: {len(train_pairs)} train pairs, {len(eval_pairs)} eval pairs ({time.perf_counter() - started:.1f}s to tokenise)")

    # 3. Model, optimiser, schedule.
    if zero3 and m.backbone != "tiny":  # from_pretrained loads each rank's shard only (zero3_init_flag)
        model = build_model(m, tokenizer, t.seed, accelerator.device)
    else:  # the tiny model is built whole, so its seeded random init equals a single-process run's
        model = built_whole(lambda: build_model(m, tokenizer, t.seed, accelerator.device), deepspeed if zero3 else None)
    n_params = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())  # ds_numel: ZeRO-3 shards
    log(f"model: {m.backbone} ({n_params / 1e6:.2f}M parameters), head {model.head}")
    packing = t.packing is not False and model.enable_packing()  # before prepare(): it wraps the model
    if t.packing is True and not packing:
        raise ConfigError(f"train.packing=true: {m.backbone} cannot be packed (it needs a causal decoder with sdpa "
                          "attention); use train.packing=auto or false")  # fmt: skip
    collate = functools.partial(collate_pairs, pad_id=tokenizer.pad_token_id, packed=packing)
    lengths = [len(p.chosen.ids) + len(p.rejected.ids) for p in train_pairs] if t.group_by_length else None
    micro_per_epoch = len(epoch_batches(len(train_pairs), t.batch_size, t.seed, 0, accelerator.process_index, accelerator.num_processes))
    steps_per_epoch, total_steps, optimizer, scheduler = optimisation(model, t, micro_per_epoch, len(train_pairs))
    model, optimizer = accelerator.prepare(model, optimizer)
    tau = m.resolved_tau()
    eval_every = t.eval_steps or steps_per_epoch

    layout = {"world_size": accelerator.num_processes, "engine": "deepspeed" if deepspeed is not None else "torch",
              "zero_stage": deepspeed.zero_stage if deepspeed is not None else None,
              "batch_size": t.batch_size, "grad_accum": t.grad_accum}  # fmt: skip
    state = {"step": 0, "epoch": 0, "micro_batch": 0, "best": None}
    if resume_from is not None:
        saved = ckpt.read_trainer_state(resume_from)
        ckpt.check_resumable(saved, layout, resume_from)
        if saved.get("engine") == "deepspeed":
            state = ckpt.load_sharded_checkpoint(resume_from, accelerator, scheduler)
        else:
            state = ckpt.load_checkpoint(resume_from, accelerator.unwrap_model(model), optimizer, scheduler)
        # Same global batch, other split over processes: the same pairs make each step; keep the position.
        state["micro_batch"] = state["micro_batch"] // saved.get("grad_accum", t.grad_accum) * t.grad_accum
        for key in layout:
            state.pop(key, None)
        log(f"resumed from {resume_from} at step {state['step']}")
    log(f"training: {total_steps} steps ({steps_per_epoch} per epoch), batch {t.batch_size} x {t.grad_accum} x {accelerator.num_processes} pairs, {precision}, "
        f"{'packed' if packing else 'padded'}{', length-grouped' if lengths else ''}")

    def save_state(reason: str) -> Path:
        path = ckpt.checkpoint_dir(output_dir, state["step"])
        if deepspeed is not None:  # every rank writes its ZeRO shard
            ckpt.save_sharded_checkpoint(path, accelerator, scheduler, {**state, **layout})
        elif main:
            ckpt.save_checkpoint(path, accelerator.unwrap_model(model), optimizer, scheduler, {**state, **layout})
        if main:
            ckpt.prune_checkpoints(output_dir, max(t.keep_checkpoints, 1))
            runlog.write({"event": "checkpoint", "step": state["step"], "path": str(path), "reason": reason})
        accelerator.wait_for_everyone()
        return path

    def save_full_model(folder: Path) -> None:
        """The HF-style model folder; under ZeRO-3 the weights are first gathered from all ranks."""
        unwrapped = accelerator.unwrap_model(model)
        if zero3:
            full = accelerator.get_state_dict(model)  # a collective: every rank takes part, rank 0 gets it
            unwrapped = _with_weights(unwrapped, full) if main else None
        if main:
            save_model(unwrapped, folder, tokenizer)
        accelerator.wait_for_everyone()

    def run_eval() -> dict:
        metrics = evaluate(model, eval_pairs, t.batch_size * 2, tau, collate, accelerator)
        if not metrics:
            return {}
        runlog.write({"event": "eval", "step": state["step"], **{f"eval/{k}": v for k, v in metrics.items()}})
        log(f"eval @ step {state['step']}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "pairs"))
        key = (metrics["accuracy"], -metrics["loss"])
        better = t.keep_best and (state["best"] is None or key > tuple(state["best"]["key"]))
        if agreed(accelerator, better):  # rank 0 decides for all: a save that only some ranks enter hangs
            state["best"] = {"key": list(key), "step": state["step"], "metrics": metrics}
            save_full_model(output_dir / "best")
        return metrics

    # 4. The loop.
    model.train()
    progress = _progress(total_steps, state["step"], main)
    window = {"loss": 0.0, "correct": 0.0, "pairs": 0, "tokens": 0, "started": time.perf_counter()}
    with StopFlag() as stop, progress:
        while state["step"] < total_steps:
            batches = epoch_batches(len(train_pairs), t.batch_size, t.seed, state["epoch"], accelerator.process_index, accelerator.num_processes, lengths)
            batches = batches[: steps_per_epoch * t.grad_accum]  # whole optimizer steps only
            while state["micro_batch"] < len(batches) and state["step"] < total_steps:
                idx = batches[state["micro_batch"]]
                batch = {k: v.to(accelerator.device) for k, v in collate([train_pairs[i] for i in idx]).items()}
                with accelerator.accumulate(model):
                    loss, score = pair_loss(model, batch, tau, t.use_margin)
                    grad_norm = backward_step(accelerator, model, optimizer, loss, t.max_grad_norm)
                state["micro_batch"] += 1
                window["loss"] += float(loss.detach()) * len(idx)
                window["correct"] += float((score > 0).sum())
                window["pairs"] += len(idx)
                window["tokens"] += real_tokens(batch)
                if not accelerator.sync_gradients:
                    continue
                scheduler.step()
                state["step"] += 1
                progress.advance()
                step = state["step"]
                if step % t.logging_steps == 0 or step == total_steps:
                    seconds = time.perf_counter() - window["started"]
                    record = {
                        "event": "train", "step": step, "epoch": round(state["epoch"] + state["micro_batch"] / len(batches), 4),
                        "loss": window["loss"] / window["pairs"], "accuracy": window["correct"] / window["pairs"],
                        "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm) if grad_norm is not None else None,
                        "pairs_per_s": window["pairs"] / seconds, "tokens_per_s": window["tokens"] / seconds,
                    }  # fmt: skip
                    runlog.write(record)
                    progress.describe(f"loss {record['loss']:.4f} acc {record['accuracy']:.3f}")
                    window = {"loss": 0.0, "correct": 0.0, "pairs": 0, "tokens": 0, "started": time.perf_counter()}
                if eval_pairs and step % eval_every == 0 and step != total_steps:
                    run_eval()
                if t.save_steps and step % t.save_steps == 0:
                    save_state("save_steps")
                asked = stop.signal is not None or (stop_after_steps is not None and step >= stop_after_steps)
                if any_rank(accelerator, asked):  # a signal may reach the ranks at different steps
                    by_count = stop_after_steps is not None and step >= stop_after_steps
                    reason = stop.signal or ("--stop-after-steps" if by_count else "a signal to another rank")
                    path = save_state(reason)
                    raise Preempted(f"stopped at step {step} ({reason}); checkpoint {path}; continue with --resume auto")
            if state["micro_batch"] >= len(batches):
                state["epoch"] += 1
                state["micro_batch"] = 0

    # 5. Final evaluation and model.
    final = run_eval()
    model_metrics = final
    best = state["best"]
    if t.keep_best and best is not None and best["step"] != state["step"]:
        log(f"final model: the best eval checkpoint (step {best['step']}, accuracy {best['metrics']['accuracy']:.4f})")
        model_metrics = best["metrics"]
        if main:
            from gpmctl.models.loading import load_model

            # Built whole: under ZeRO-3, from_pretrained would otherwise shard it, a collective rank 0 runs alone.
            best_model = built_whole(lambda: load_model(output_dir / "best", dtype="float32"), deepspeed if zero3 else None)
            save_model(best_model, output_dir, tokenizer)
    else:
        save_full_model(output_dir)
    if main:
        summary = {"steps": state["step"], "model_eval": model_metrics, "final_eval": final, "best": best,
                   "recipe": str(output_dir / "recipe.yaml")}  # fmt: skip
        (output_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
        runlog.write({"event": "done", **summary})
    accelerator.wait_for_everyone()
    runlog.close()
    return TrainResult(output_dir, state["step"], model_metrics, state["best"])


def _with_weights(model: PreferenceModel, state_dict: dict) -> PreferenceModel:
    """A CPU PreferenceModel holding `state_dict` (gathered from ZeRO-3 shards), built on the meta device
    from the sharded model's own config so no second copy of the initial weights is made."""
    with torch.device("meta"):
        skeleton = PreferenceModel(type(model.backbone)(model.backbone.config), model.head)
    skeleton.load_state_dict({k: v.detach().cpu() for k, v in state_dict.items()}, assign=True)
    return skeleton


class _progress:
    """A Rich progress bar on stderr when it is a terminal; otherwise nothing (logs carry the numbers)."""

    def __init__(self, total: int, done: int, enabled: bool):
        self.bar = None
        if enabled and sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            from gpmctl.utils import stderr_console

            self.bar = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                TextColumn("{task.description}"), console=stderr_console(), transient=True)  # fmt: skip
            self.task = self.bar.add_task("", total=total, completed=done)

    def __enter__(self):
        if self.bar:
            self.bar.start()
        return self

    def __exit__(self, *exc):
        if self.bar:
            self.bar.stop()

    def advance(self):
        if self.bar:
            self.bar.advance(self.task)

    def describe(self, text: str):
        if self.bar:
            self.bar.update(self.task, description=text)
