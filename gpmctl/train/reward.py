"""`gpmctl train-rm`: train a Bradley-Terry reward model or a General Preference Model.

The recipe, top to bottom (nothing in output_dir is written or deleted before step 4):
  0. check the recipe against the device, the run it resumes (`check_resumed_recipe`) and the files it names
  1. read and tokenise the preference pairs (held-out split by prompt when no eval file is given)
  2. build the model (float32 weights under mixed precision), AdamW, the warmup + cosine schedule, and
     hand them to accelerate
  3. load the checkpoint to resume (the one before it if it does not read back)
  4. lock and prepare the run folder (resolved recipe, environment report)
  5. loop: one forward pass per batch of pairs ([chosen; rejected] stacked; packed into one row
     without padding where the backbone allows, `train.packing`), preference loss, gradient
     accumulation and clipping (a non-finite gradient norm stops the run); log, evaluate, keep the best,
     checkpoint
  6. save the final model as a folder every other gpmctl command accepts as --model
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
from gpmctl.data.batches import epoch_batches
from gpmctl.data.split import split_by_prompt
from gpmctl.data.tokenize import EncodedPair, SequenceEncoder, collate_pairs, real_tokens
from gpmctl.errors import ConfigError, GpmctlError
from gpmctl.eval.metrics import agrees_with_label
from gpmctl.models import preference as P
from gpmctl.models.loading import build_model, load_tokenizer, save_model, training_dtype
from gpmctl.models.reward_model import HEAD_FILE, PreferenceModel
from gpmctl.train import checkpoint as ckpt
from gpmctl.train.loop import (  # noqa: F401  (Preempted: re-exported)
    Preempted, StopFlag, agreed, any_rank, backward_step, built_whole, keeps_fp32_master_weights, make_accelerator, zero3_plugin,
)  # fmt: skip
from gpmctl.utils import RunLog, environment_report, log, output_folder, quiet_libraries


@dataclass
class TrainResult:
    output_dir: Path
    steps: int
    final_metrics: dict = field(default_factory=dict)  # eval metrics of the saved model
    best_metrics: dict | None = None


# ----------------------------------------------------------------------------------------------------
# Data


def load_pairs(recipe: Recipe, encoder: SequenceEncoder) -> tuple[list[EncodedPair], list[EncodedPair]]:
    from gpmctl.data.formats import ReadOptions
    from gpmctl.data.sources import read_source

    d, t = recipe.data, recipe.train
    options = ReadOptions(allow_empty_responses=d.allow_empty_responses)
    train_records = list(read_source(d.train, limit=d.max_samples, options=options))
    if not train_records:
        raise GpmctlError(f"{d.train}: no preference pairs")
    if d.eval:
        eval_records = list(read_source(d.eval, options=options))
    else:
        train_records, eval_records = split_by_prompt(train_records, d.eval_fraction, t.seed)

    def encode(records, path):
        return [encoder.encode_pair(r, f"{path}:{i + 1}", t.use_margin, t.use_soft_labels) for i, r in enumerate(records)]

    train = encode(train_records, d.train)
    held = encode(eval_records, d.eval or d.train)
    if encoder.truncated:
        log(f"{encoder.truncated} sequences were longer than data.max_length={d.max_length} and were cut ({d.truncation})")
    return train, held


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
    return pair_metrics(ordered, tau, [p.meta for p in pairs], [p.label for p in pairs])


def pair_metrics(scores: torch.Tensor, tau: float, metas: list[dict | None] | None = None,
                 labels: list[float] | None = None) -> dict:  # fmt: skip
    """scores [N] s(chosen > rejected), labels [N] P(chosen > rejected) (default 1) -> accuracy over the pairs
    whose label picks a side (`agrees_with_label`: a 0.5 label is left out; None if no pair is left), mean
    P(chosen > rejected), the training loss (soft labels included); accuracy by `kind` if the metas have one."""
    s = scores.double()
    y = torch.ones_like(s) if labels is None else torch.tensor(labels, dtype=torch.float64)
    correct, decided = agrees_with_label(s, y), y != 0.5

    def accuracy(selected: torch.Tensor) -> float | None:
        return float(correct[selected].double().mean()) if bool(selected.any()) else None

    metrics = {
        "accuracy": accuracy(decided),
        "accuracy_pairs": int(decided.sum()),
        "mean_prob": float(torch.sigmoid(s / tau).mean()),
        "loss": float(P.preference_loss(s, tau, label=y).mean()),
        "pairs": len(s),
    }
    kinds = [m.get("kind") for m in metas] if metas and all(m for m in metas) else None
    if kinds and any(kinds):
        for kind in sorted({k for k in kinds if k}):
            metrics[f"accuracy/{kind}"] = accuracy(decided & torch.tensor([k == kind for k in kinds]))
    return metrics


# ----------------------------------------------------------------------------------------------------
# The run


def optimisation(model: torch.nn.Module, t, micro_per_epoch: int, n_train: int) -> tuple[int, int, torch.optim.Optimizer, object]:
    """The optimizer and warmup + decay schedule of a train-rm run (gpmctl.train.optim)
    -> (optimizer steps per epoch, total steps, optimizer, scheduler)."""
    from gpmctl.train.optim import build_optimizer, build_schedule

    steps_per_epoch = micro_per_epoch // t.grad_accum
    if steps_per_epoch == 0:
        raise ConfigError(f"train.batch_size x train.grad_accum x processes exceeds the {n_train} training pairs")
    total_steps = t.max_steps or math.ceil(t.epochs * steps_per_epoch)
    optimizer = build_optimizer(model, t)
    return steps_per_epoch, total_steps, optimizer, build_schedule(optimizer, t, total_steps)


def _resume_candidates(output_dir: Path, resume: str | None) -> list[Path]:
    """The checkpoints to resume from, newest first: every complete one for `auto`, the one named, or none."""
    if resume in (None, "none"):
        if ckpt.list_checkpoints(output_dir) or (output_dir / HEAD_FILE).exists():
            raise ConfigError(
                f"{output_dir}: already holds a run; pass --resume auto to continue it or --overwrite to start again"
            )
        return []
    if resume == "auto":
        return ckpt.list_checkpoints(output_dir)[::-1]
    path = Path(resume)
    if not (path / "trainer_state.json").is_file():
        raise ConfigError(f"{resume}: not a checkpoint folder (no trainer_state.json)")
    return [path]


RESUMABLE_CHANGES = ("output_dir", "train.logging_steps", "train.eval_steps", "train.save_steps", "train.keep_checkpoints",
                     "train.keep_best", "train.batch_size", "train.grad_accum", "model.gradient_checkpointing", "launch.",
                     "evaluate.")  # fmt: skip
"""Recipe keys a resumed run may change: how often it logs, evaluates and checkpoints, which model it keeps,
the benchmarks after it, activation memory, and how one global batch is split over processes and micro-batches
(`check_resumable` holds batch_size x grad_accum x processes fixed). Anything else would change the run."""


def check_resumed_recipe(recipe: Recipe, run_dir: Path) -> list[str]:
    """Compare `recipe` with the run's saved recipe.yaml -> the allowed changes as `key: old -> new`; any
    other change is a ConfigError naming the keys (nothing of it would apply to the optimizer state)."""
    from gpmctl.config import load_recipe, recipe_to_dict

    saved_file = run_dir / "recipe.yaml"
    if not saved_file.is_file():
        return []
    saved, now = _flat(recipe_to_dict(load_recipe(saved_file))), _flat(recipe_to_dict(recipe))
    changed = [key for key in now if saved.get(key) != now[key]]
    refused = [key for key in changed if not key.startswith(RESUMABLE_CHANGES)]
    if refused:
        shown = ", ".join(f"{key} ({saved.get(key)!r} -> {now[key]!r})" for key in refused)
        raise ConfigError(f"{getattr(recipe, 'source', 'recipe')}: {shown}: differ from {saved_file}, which a resumed "
                          "run must keep; resume with the saved values, or start a new run (another output_dir, "
                          "or --overwrite)")  # fmt: skip
    return [f"{key}: {saved.get(key)!r} -> {now[key]!r}" for key in changed]


def _flat(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        flat.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value})
    return flat


def data_fingerprint(pairs: list[EncodedPair]) -> str:
    """sha256 of the tokenised pairs (token ids, prompt ends, labels, margins). Every checkpoint records it:
    a resumed run must train on the data its checkpoint was trained on, even when the file kept its name."""
    import numpy as np

    digest = hashlib.sha256()
    for p in pairs:
        sizes = [len(p.chosen.ids), len(p.rejected.ids), p.chosen.prompt_end, p.rejected.prompt_end]
        digest.update(np.array(sizes, dtype=np.int64).tobytes() + np.array([p.label, p.margin], dtype=np.float64).tobytes())
        digest.update(np.asarray(p.chosen.ids, dtype=np.int64).tobytes() + np.asarray(p.rejected.ids, dtype=np.int64).tobytes())
    return digest.hexdigest()


def _check_same_data(saved: dict, fingerprint: dict, recipe: Recipe, path: Path) -> None:
    for split in ("train", "eval"):
        was = (saved.get("data_sha256") or {}).get(split)
        if was is not None and was != fingerprint[split]:
            key = "data.eval" if split == "eval" and recipe.data.eval else "data.train"
            raise ConfigError(f"{getattr(recipe, 'source', 'recipe')}: {key}: the {split} pairs of "
                              f"{getattr(recipe.data, key[5:])} differ from those {path} was trained on (the data "
                              "changed); resume with that data, or start a new run")  # fmt: skip


def check_benchmark_files(recipe: Recipe) -> None:
    """The local files the `evaluate:` section names exist before training starts (a hub id such as
    allenai/reward-bench is only read once the model is saved)."""
    from gpmctl.errors import DataError
    from gpmctl.eval import rmbench

    e, source = recipe.evaluate, getattr(recipe, "source", "recipe")
    bench = e.rewardbench
    local = bench and (Path(bench).suffix in (".parquet", ".jsonl", ".json", ".gz") or bench.startswith(("/", ".", "~")))
    if local and not Path(bench).exists():
        raise ConfigError(f"{source}: evaluate.rewardbench: {bench}: no such file")
    if e.rmbench:
        try:
            rmbench.data_files([e.rmbench])
        except DataError as err:
            raise ConfigError(f"{source}: evaluate.rmbench: {err}") from None


def train_reward_model(recipe: Recipe, resume: str | None = None, overwrite: bool = False, stop_after_steps: int | None = None) -> TrainResult:
    """The run of the module docstring. Everything is checked before anything in output_dir is written or
    deleted (the recipe against the device and the run it resumes, data, benchmark files, model,
    checkpoint); from then to its end the run holds output_dir/.lock."""
    lock = ckpt.RunLock(recipe.output_dir)
    try:
        return _train(recipe, resume, overwrite, stop_after_steps, lock)
    finally:
        lock.release()


def _train(recipe: Recipe, resume: str | None, overwrite: bool, stop_after_steps: int | None, lock: ckpt.RunLock) -> TrainResult:
    from accelerate.utils import set_seed

    m, d, t = recipe.model, recipe.data, recipe.train
    source = getattr(recipe, "source", "recipe")
    quiet_libraries()
    output_dir = output_folder(recipe.output_dir, source)
    if overwrite and resume not in (None, "none"):
        raise ConfigError("--overwrite and --resume exclude each other")
    accelerator, precision = make_accelerator(t.precision, t.grad_accum, t.batch_size, t.max_grad_norm, source)
    main = accelerator.is_main_process
    deepspeed = accelerator.state.deepspeed_plugin
    zero3 = zero3_plugin(accelerator) is not None

    # 0. Checks that need no data: the folder is free, the resumed run's recipe, the benchmark files.
    lock.acquire(accelerator, create=False)  # a folder another run is writing to is refused before any work
    candidates = [] if overwrite else _resume_candidates(output_dir, resume)
    changes = check_resumed_recipe(recipe, candidates[0].parent.parent) if candidates else []
    check_benchmark_files(recipe)
    set_seed(t.seed)

    # 1. Data.
    tokenizer = load_tokenizer(m.tokenizer or m.backbone, m.trust_remote_code)
    encoder = SequenceEncoder(tokenizer, d.max_length, m.eos, m.gate_prompt, d.truncation)
    started = time.perf_counter()
    train_pairs, eval_pairs = load_pairs(recipe, encoder)
    tokenised_s = time.perf_counter() - started
    fingerprint = {"train": data_fingerprint(train_pairs), "eval": data_fingerprint(eval_pairs)}

    # 2. Model, optimiser, schedule: float32 weights unless the engine keeps fp32 master copies itself.
    dtype = training_dtype(m.dtype, accelerator.device, keeps_fp32_master_weights(accelerator))
    build = lambda: build_model(m, tokenizer, t.seed, accelerator.device, dtype)  # noqa: E731
    if zero3 and m.backbone != "tiny":  # from_pretrained loads each rank's shard only (zero3_init_flag)
        model = build()
    else:  # the tiny model is built whole, so its seeded random init equals a single-process run's
        model = built_whole(build, deepspeed if zero3 else None)
    n_params = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())  # ds_numel: ZeRO-3 shards
    packing = t.packing is not False and model.enable_packing()  # before prepare(): it wraps the model
    if t.packing is True and not packing:
        raise ConfigError(f"{source}: train.packing=true: {m.backbone} cannot be packed (it needs a causal decoder with sdpa "
                          "attention); use train.packing=auto or false")  # fmt: skip
    collate = functools.partial(collate_pairs, pad_id=tokenizer.pad_token_id, packed=packing)
    lengths = [len(p.chosen.ids) + len(p.rejected.ids) for p in train_pairs] if t.group_by_length else None
    micro_per_epoch = len(epoch_batches(len(train_pairs), t.batch_size, t.seed, 0, accelerator.process_index, accelerator.num_processes))
    steps_per_epoch, total_steps, optimizer, scheduler = optimisation(model, t, micro_per_epoch, len(train_pairs))
    model, optimizer = accelerator.prepare(model, optimizer)
    tau = m.resolved_tau()
    eval_every = t.eval_steps or steps_per_epoch

    # 3. The checkpoint to continue from, newest first: with --resume auto an unreadable one falls back to the one before.
    layout = {"world_size": accelerator.num_processes, "engine": "deepspeed" if deepspeed is not None else "torch",
              "zero_stage": deepspeed.zero_stage if deepspeed is not None else None,
              "batch_size": t.batch_size, "grad_accum": t.grad_accum}  # fmt: skip
    state = {"step": 0, "epoch": 0, "micro_batch": 0, "best": None, "data_sha256": fingerprint}
    resume_from = None
    for path in candidates:
        try:
            saved = ckpt.read_trainer_state(path)
            ckpt.check_resumable(saved, layout, path)
            _check_same_data(saved, fingerprint, recipe, path)
            if saved.get("engine") == "deepspeed":
                state = ckpt.load_sharded_checkpoint(path, accelerator, scheduler)
            else:
                state = ckpt.load_checkpoint(path, accelerator.unwrap_model(model), optimizer, scheduler)
        except ckpt.UnreadableCheckpoint as e:
            if resume != "auto":
                raise
            log(f"warning: {e}; trying the checkpoint before it")
            continue
        resume_from = path
        # Same global batch, other split over processes: the same pairs make each step; keep the position.
        state["micro_batch"] = state["micro_batch"] // saved.get("grad_accum", t.grad_accum) * t.grad_accum
        for key in layout:
            state.pop(key, None)
        state.setdefault("data_sha256", fingerprint)  # checkpoints written before it was recorded
        break
    if candidates and resume_from is None:
        raise ConfigError(f"{output_dir}: none of its {len(candidates)} checkpoints reads back (see the warnings); "
                          "start again with --overwrite")  # fmt: skip

    # 4. The run folder, written only now that everything above is known to be good.
    lock.acquire(accelerator)
    if overwrite and main:
        import shutil

        shutil.rmtree(output_dir / ckpt.CHECKPOINTS, ignore_errors=True)
        (output_dir / HEAD_FILE).unlink(missing_ok=True)
    if main:
        (output_dir / "recipe.yaml").write_text(dump_recipe(recipe))
        (output_dir / "environment.json").write_text(json.dumps(environment_report(accelerator), indent=2))
    accelerator.wait_for_everyone()
    runlog = RunLog(output_dir / "log.jsonl", enabled=main)
    log(f"data: {len(train_pairs)} train pairs, {len(eval_pairs)} eval pairs ({tokenised_s:.1f}s to tokenise)")
    weights = str(dtype).removeprefix("torch.")
    log(f"model: {m.backbone} ({n_params / 1e6:.2f}M parameters, {weights} weights), head {accelerator.unwrap_model(model).head}")
    for change in changes:
        log(f"resume: {change}")
    if resume_from is not None:
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
        shown = {k: v for k, v in metrics.items() if k not in ("pairs", "accuracy_pairs") and v is not None}
        log(f"eval @ step {state['step']}: " + ", ".join(f"{k} {v:.4f}" for k, v in shown.items()))
        key = (metrics["accuracy"] or 0.0, -metrics["loss"])  # no pair with a side to take: the loss decides
        better = t.keep_best and (state["best"] is None or key > tuple(state["best"]["key"]))
        if agreed(accelerator, better):  # rank 0 decides for all: a save that only some ranks enter hangs
            state["best"] = {"key": list(key), "step": state["step"], "metrics": metrics}
            save_full_model(output_dir / "best")
        return metrics

    # 5. The loop.
    model.train()
    progress = _progress(total_steps, state["step"], main)
    window = {"loss": 0.0, "correct": 0.0, "decided": 0, "pairs": 0, "tokens": 0, "started": time.perf_counter()}
    with StopFlag() as stop, progress:
        while state["step"] < total_steps:
            batches = epoch_batches(len(train_pairs), t.batch_size, t.seed, state["epoch"], accelerator.process_index, accelerator.num_processes, lengths)
            batches = batches[: steps_per_epoch * t.grad_accum]  # whole optimizer steps only
            while state["micro_batch"] < len(batches) and state["step"] < total_steps:
                idx = batches[state["micro_batch"]]
                batch = {k: v.to(accelerator.device) for k, v in collate([train_pairs[i] for i in idx]).items()}
                with accelerator.accumulate(model):
                    loss, score = pair_loss(model, batch, tau, t.use_margin)
                    grad_norm = backward_step(accelerator, model, optimizer, loss, t.max_grad_norm, step=state["step"] + 1)
                state["micro_batch"] += 1
                window["loss"] += float(loss.detach()) * len(idx)
                window["correct"] += float(agrees_with_label(score, batch["label"]).sum())
                window["decided"] += sum(train_pairs[i].label != 0.5 for i in idx)
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
                        "loss": window["loss"] / window["pairs"],
                        "accuracy": window["correct"] / window["decided"] if window["decided"] else None,
                        "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm) if grad_norm is not None else None,
                        "pairs_per_s": window["pairs"] / seconds, "tokens_per_s": window["tokens"] / seconds,
                    }  # fmt: skip
                    runlog.write(record)
                    progress.describe(f"loss {record['loss']:.4f} acc {record['accuracy'] or 0.0:.3f}")
                    window = {"loss": 0.0, "correct": 0.0, "decided": 0, "pairs": 0, "tokens": 0, "started": time.perf_counter()}
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

    # 6. Final evaluation and model.
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
