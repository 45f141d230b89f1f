"""`gpmctl train-rm`: train a Bradley-Terry reward model or a General Preference Model.

The recipe, top to bottom (nothing in output_dir is written or deleted before step 4):
  0. check the recipe against the run it resumes (`check_resumed_recipe`) and the files it names
  1. read and tokenise the preference pairs (held-out split by prompt when no eval file is given)
  2. build the model (float32 weights under mixed precision), the optimizer and schedule, and hand them to
     the engine (gpmctl.engine: one process or several, as the launcher set them up)
  3. load the checkpoint to resume (the one before it if it does not read back)
  4. lock and prepare the run folder (resolved recipe, environment report)
  5. the loop (gpmctl.train.loop.fit) over batches of pairs, each ONE forward pass over [chosen; rejected]:
     the step is `pair_forward` (preference loss, pair accuracy); log, evaluate, keep the best, checkpoint
  6. save the final model as a folder every other gpmctl command accepts as --model

Where the batches come from is the one choice between two ways of training (`model.freeze_backbone`):
  tokens           `TokenPairs`: padded, or packed into one row without padding (`train.packing`); any
                   engine; resumable checkpoints
  cached features  `gpmctl.train.features.FeaturePairs`: a frozen backbone's hidden states, computed once and
                   cached, so only the head trains (seconds; one process on one thread; no checkpoints)
Both run the same step, loop, evaluation and keep-best, and write the same run folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gpmctl.config import Recipe
from gpmctl.data.batches import epoch_batches
from gpmctl.data.split import split_by_prompt
from gpmctl.data.tokenize import EncodedPair, SequenceEncoder, collate_pairs, real_tokens, shared_prefix_length
from gpmctl.engine import Engine
from gpmctl.errors import ConfigError, GpmctlError
from gpmctl.eval.metrics import agrees_with_label
from gpmctl.models import preference as P
from gpmctl.models.heads import HEAD_FILE, PreferenceOutput
from gpmctl.models.model import PreferenceModel
from gpmctl.train import checkpoint as ckpt
from gpmctl.train.features import feature_pairs, one_thread
from gpmctl.train.loop import Evaluation, Preempted, Step, StopFlag, fit  # noqa: F401  (Preempted: re-exported)
from gpmctl.train.progress import TrainProgress
from gpmctl.utils import flatten, log, output_folder, quiet_libraries


@dataclass
class TrainResult:
    output_dir: Path
    steps: int
    final_metrics: dict = field(default_factory=dict)  # eval metrics of the saved model
    best_metrics: dict | None = None
    model: PreferenceModel | None = None  # the trained model (one process), e.g. to score more data with it
    timing: dict = field(default_factory=dict)  # seconds per stage


# ----------------------------------------------------------------------------------------------------
# Data


def load_pairs(recipe: Recipe, encoder: SequenceEncoder) -> tuple[list[EncodedPair], list[EncodedPair]]:
    from gpmctl.data.formats import ReadOptions
    from gpmctl.data.sources import read_source

    d, t = recipe.data, recipe.train
    options = ReadOptions(allow_empty_responses=d.allow_empty_responses, keys=d.input_keys())
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
    if encoder.doubled_eos and recipe.model.freeze_backbone:
        log(
            f"warning: {encoder.doubled_eos} sequences end in two EOS tokens: the chat template closes the turn with EOS, "
            f"and model.eos: {encoder.eos} sets the token after it to EOS again. A frozen backbone's feature there can "
            "hold too little of the response for a head (docs/results.md, section 1); model.eos: template reads the template's own last token"
        )
    return train, held


def shared_fraction(pairs: list[EncodedPair]) -> float:
    """The part of the pairs' tokens that shared-prompt rows compute once instead of twice."""
    total = sum(len(p.chosen.ids) + len(p.rejected.ids) for p in pairs)
    return sum(shared_prefix_length([p.chosen, p.rejected]) for p in pairs) / max(total, 1)


class TokenPairs:
    """Tokenised pairs as the batches `pair_loss` takes: B pairs -> one batch of 2B sequences (chosen first),
    padded or packed into one row (`collate`), moved to `device`, with their margins and labels."""

    def __init__(self, pairs: list[EncodedPair], collate, device):
        self.pairs, self.collate, self.device = pairs, collate, device

    def __len__(self) -> int:
        return len(self.pairs)

    def batch(self, index: list[int]) -> dict:
        pairs = [self.pairs[i] for i in index]
        batch = self.collate(pairs)
        tokens = real_tokens(batch)  # counted on the CPU, before the move: no device sync
        sequence_tokens = sum(len(p.chosen.ids) + len(p.rejected.ids) for p in pairs)
        return {**{k: v.to(self.device) for k, v in batch.items()}, "tokens": tokens, "sequence_tokens": sequence_tokens}


# ----------------------------------------------------------------------------------------------------
# The step and evaluation

MODEL_INPUTS = ("input_ids", "attention_mask", "prompt_end", "row", "hidden")


def pair_loss(model, batch: dict, tau: float, use_margin: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """`pair_forward` without the rewards: (mean loss, s(chosen > rejected) [B])."""
    return pair_forward(model, batch, tau, use_margin)[:2]


def pair_forward(
    model, batch: dict, tau: float, use_margin: bool, center: float | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One forward over [chosen; rejected] (padded, packed, or hidden states) -> (mean loss, per-pair scores
    s(chosen > rejected) [B], BT rewards [B, 2] or None). The soft-label loss is the hard one where label = 1,
    bit for bit; `center` adds TRL's center_rewards term c * mean((r_chosen + r_rejected)^2) (BT)."""
    out = model(**{k: batch[k] for k in MODEL_INPUTS if k in batch})
    head = getattr(model, "module", model).head  # a DDP / engine wrapper holds the model as .module
    half = batch["margin"].shape[0]
    split = lambda x: (x[:half], x[half:]) if x is not None else (None, None)  # noqa: E731
    (vc, vr), (gc, gr) = split(out.value), split(out.gate)
    score = head.pair_score(PreferenceOutput(vc, gc), PreferenceOutput(vr, gr))
    loss = P.preference_loss(score, tau, batch["margin"] if use_margin else None, batch["label"]).mean()
    rewards = torch.stack([vc, vr], dim=-1).detach() if head.kind == "bt" else None
    if center:
        loss = loss + center * ((vc + vr) ** 2).mean()
    return loss, score.detach(), rewards


def pair_step(model, batch: dict, tau: float, use_margin: bool, center: float | None = None) -> Step:
    """The training step of a micro-batch of pairs, with what the log window sums (all on the device)."""
    loss, score, _ = pair_forward(model, batch, tau, use_margin, center)
    label = batch["label"]
    stats = {
        "loss_sum": loss.detach() * len(label),
        "correct": agrees_with_label(score, label).sum(),
        "decided": (label != 0.5).sum(),
        "pairs": len(label),
    }
    for key in ("tokens", "sequence_tokens"):  # computed; in the pairs' sequences (a shared prompt counts twice)
        if key in batch:
            stats[key] = batch[key]
    return Step(loss, stats)


@torch.no_grad()
def evaluate(engine: Engine, model, pairs, batch_size: int, tau: float, metas: list, labels: list[float]) -> dict:
    """Pair accuracy (s > 0 strictly: ties count wrong), mean P(chosen > rejected), loss; by `kind` if present;
    for BT also the mean and std of the rewards of every eval response (saved with the model: OpenRLHF's
    normalisation, `gpmctl score --normalize`). `pairs`: a batch source (TokenPairs, FeaturePairs) of the eval
    pairs, dealt round robin over the ranks."""
    n = len(pairs)
    if not n:
        return {}
    was_training = model.training
    model.eval()
    mine = list(range(engine.rank, n, engine.world))
    per_rank = math.ceil(n / engine.world)
    columns = torch.full((per_rank, 3), float("nan"))  # s(chosen > rejected), BT reward of chosen, of rejected
    for start in range(0, len(mine), batch_size):
        idx = mine[start : start + batch_size]
        _, s, rewards = pair_forward(model, pairs.batch(idx), tau, use_margin=False)
        columns[start : start + len(idx), 0] = s.float().cpu()
        if rewards is not None:
            columns[start : start + len(idx), 1:] = rewards.float().cpu()
    gathered = engine.gather(columns.to(engine.device)).cpu().view(engine.world, per_rank, 3)
    ordered = gathered.transpose(0, 1).reshape(-1, 3)[:n]  # undo the round robin: row r holds pairs r, r + world, ...
    model.train(was_training)
    metrics = pair_metrics(ordered[:, 0], tau, metas, labels)
    if rewards is not None:
        every = ordered[:, 1:].double().reshape(-1)
        metrics.update(reward_mean=float(every.mean()), reward_std=float(every.std()) if len(every) > 1 else None)
    return metrics


def pair_metrics(
    scores: torch.Tensor, tau: float, metas: list[dict | None] | None = None, labels: list[float] | None = None
) -> dict:
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
# Resuming


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


def _resume_candidates(output_dir: Path, resume: str | None, resumable: bool = True) -> list[Path]:
    """The checkpoints to resume from, newest first: every complete one for `auto`, the one named, or none.
    A run that keeps no checkpoints (cached features; `_train` refuses --resume for it) starts in a folder
    that holds no run."""
    if not resumable:
        if (output_dir / HEAD_FILE).exists() or (output_dir / "metrics.json").exists():
            raise ConfigError(f"{output_dir}: already holds a run; pass --overwrite to start again")
        return []
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


RESUMABLE_CHANGES = (
    "output_dir",
    "train.logging_steps",
    "train.report_to",
    "train.eval_steps",
    "train.save_steps",
    "train.keep_checkpoints",
    "train.keep_best",
    "train.batch_size",
    "train.grad_accum",
    "model.gradient_checkpointing",
    "launch.",
    "evaluate.",
)
"""Recipe keys a resumed run may change: how often and where it logs, evaluates and checkpoints, which model it keeps,
the benchmarks after it, activation memory, and how one global batch is split over processes and micro-batches
(`Engine.check_resumable` holds batch_size x grad_accum x processes fixed). Anything else would change the run."""


def check_resumed_recipe(recipe: Recipe, run_dir: Path) -> list[str]:
    """Compare `recipe` with the run's saved recipe.yaml -> the allowed changes as `key: old -> new`; any
    other change is a ConfigError naming the keys (nothing of it would apply to the optimizer state)."""
    from gpmctl.config import load_recipe, recipe_to_dict

    saved_file = run_dir / "recipe.yaml"
    if not saved_file.is_file():
        return []
    saved, now = flatten(recipe_to_dict(load_recipe(saved_file))), flatten(recipe_to_dict(recipe))
    changed = [key for key in now if saved.get(key) != now[key]]
    refused = [key for key in changed if not key.startswith(RESUMABLE_CHANGES)]
    if refused:
        shown = ", ".join(f"{key} ({saved.get(key)!r} -> {now[key]!r})" for key in refused)
        raise ConfigError(
            f"{getattr(recipe, 'source', 'recipe')}: {shown}: differ from {saved_file}, which a resumed "
            "run must keep; resume with the saved values, or start a new run (another output_dir, "
            "or --overwrite)"
        )
    return [f"{key}: {saved.get(key)!r} -> {now[key]!r}" for key in changed]


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
            raise ConfigError(
                f"{getattr(recipe, 'source', 'recipe')}: {key}: the {split} pairs of "
                f"{getattr(recipe.data, key[5:])} differ from those {path} was trained on (the data "
                "changed); resume with that data, or start a new run"
            )


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


# ----------------------------------------------------------------------------------------------------
# The run


def train_reward_model(
    recipe: Recipe,
    resume: str | None = None,
    overwrite: bool = False,
    stop_after_steps: int | None = None,
    cached_features: bool | None = None,
    pairs: tuple[list[EncodedPair], list[EncodedPair]] | None = None,
    save: bool = True,
) -> TrainResult:
    """The run of the module docstring. Everything is checked before anything in output_dir is written or
    deleted (the recipe against the run it resumes, data, benchmark files, model, checkpoint); from then to
    its end the run holds output_dir/.lock.

    cached_features: train the head on cached backbone features (default: model.freeze_backbone; False runs
    the frozen backbone at every step, as a check of the cache). pairs: the (train, eval) pairs as
    `load_pairs` encodes them, when the caller has them already. save=False leaves the model folder out."""
    lock = ckpt.RunLock(recipe.output_dir)
    try:
        return _train(recipe, resume, overwrite, stop_after_steps, cached_features, pairs, save, lock)
    finally:
        lock.release()


def _train(
    recipe: Recipe,
    resume: str | None,
    overwrite: bool,
    stop_after_steps: int | None,
    cached_features: bool | None,
    given_pairs: tuple | None,
    save: bool,
    lock: ckpt.RunLock,
) -> TrainResult:
    from accelerate.utils import set_seed

    from gpmctl.models.build import build_model
    from gpmctl.models.sources import load_tokenizer

    m, d, t = recipe.model, recipe.data, recipe.train
    source = getattr(recipe, "source", "recipe")
    features = m.freeze_backbone if cached_features is None else cached_features
    if features and not m.freeze_backbone:
        raise ConfigError(f"{source}: cached features need model.freeze_backbone: true")
    quiet_libraries()
    started = time.perf_counter()
    output_dir = output_folder(recipe.output_dir, source)
    if overwrite and resume not in (None, "none"):
        raise ConfigError("--overwrite and --resume exclude each other")
    if features and resume not in (None, "none"):
        raise ConfigError("--resume: a frozen-backbone run keeps no checkpoints (the head trains in seconds); use --overwrite")
    # Cached features: one process, the head's few small matmuls on the CPU; otherwise the launcher's engine.
    engine = (
        Engine.local(t.grad_accum)
        if features
        else Engine.create(t.precision, t.grad_accum, t.batch_size, t.max_grad_norm, source)
    )

    # 0. Checks that need no data: the folder is free, the resumed run's recipe, the benchmark files.
    lock.acquire(engine, create=False)  # a folder another run is writing to is refused before any work
    candidates = [] if overwrite else _resume_candidates(output_dir, resume, resumable=not features)
    changes = check_resumed_recipe(recipe, candidates[0].parent.parent) if candidates else []
    check_benchmark_files(recipe)
    set_seed(t.seed)

    # 1. Data.
    tokenizer = load_tokenizer(m.tokenizer or m.backbone, m.trust_remote_code)
    encoder = SequenceEncoder(tokenizer, d.max_length, m.resolved_eos(), m.gate_prompt, d.truncation)
    train_pairs, eval_pairs = given_pairs or load_pairs(recipe, encoder)
    fingerprint = {"train": data_fingerprint(train_pairs), "eval": data_fingerprint(eval_pairs)}
    timing = {"prepare_s": round(time.perf_counter() - started, 2)}

    # 2. Model, optimiser, schedule: float32 weights unless the engine keeps fp32 master copies itself.
    dtype = engine.weights_dtype(m.dtype)
    # A hub backbone loads sharded where the engine shards weights; the tiny one is built whole, so its seeded
    # random init equals a single-process run's.
    model = engine.build(lambda: build_model(m, tokenizer, t.seed, engine.device, dtype), shard=m.backbone != "tiny")
    n_params = engine.parameter_count(model)
    packing = not features and t.packing is not False and model.enable_packing()  # before prepare(): it wraps the model
    if t.packing is True and not features and not packing:
        raise ConfigError(
            f"{source}: train.packing=true: {m.backbone} cannot be packed (it needs a causal decoder with sdpa "
            "attention); use train.packing=auto or false"
        )
    if t.share_prompt is True and not packing:
        raise ConfigError(
            f"{source}: train.share_prompt=true needs packed batches ({'cached features' if features else 'packing is off'})"
        )
    share = packing and t.share_prompt is not False
    lengths = [len(p.chosen.ids) + len(p.rejected.ids) for p in train_pairs] if t.group_by_length and not features else None

    def batches(epoch: int) -> list[list[int]]:  # this rank's micro-batches, whole optimizer steps only
        mine = epoch_batches(len(train_pairs), t.batch_size, t.seed, epoch, engine.rank, engine.world, lengths)
        return mine[: len(mine) // t.grad_accum * t.grad_accum]

    steps_per_epoch, total_steps, optimizer, scheduler = optimisation(model, t, len(batches(0)), len(train_pairs))
    model, optimizer = engine.prepare(model, optimizer)
    tau = m.resolved_tau()

    # 3. The checkpoint to continue from, if any.
    layout = engine.layout(t.batch_size, t.grad_accum)
    state, resume_from = _resume_state(engine, candidates, resume, layout, fingerprint, recipe, (model, optimizer, scheduler))

    # 4. The run folder, written only now that everything above is known to be good.
    lock.acquire(engine)
    if overwrite and engine.is_main:
        import shutil

        for folder in (ckpt.CHECKPOINTS, "best"):
            shutil.rmtree(output_dir / folder, ignore_errors=True)
        for name in (HEAD_FILE, "log.jsonl", "metrics.json"):
            (output_dir / name).unlink(missing_ok=True)
    runlog = ckpt.open_run_folder(engine, output_dir, recipe)
    log(f"data: {len(train_pairs)} train pairs, {len(eval_pairs)} eval pairs")
    weights = str(dtype).removeprefix("torch.")
    frozen = " (frozen: the head trains on cached features)" if features else ""
    log(f"model: {m.backbone}{frozen} ({n_params / 1e6:.2f}M parameters, {weights} weights), head {engine.unwrap(model).head}")
    for change in changes:
        log(f"resume: {change}")
    if resume_from is not None:
        log(f"resumed from {resume_from} at step {state['step']}")

    if features:
        train_source, eval_source, feature_timing = feature_pairs(
            engine.unwrap(model), train_pairs, eval_pairs, tokenizer.pad_token_id
        )
        timing.update(feature_timing)
    else:
        collate = lambda pairs: collate_pairs(pairs, pad_id=tokenizer.pad_token_id, packed=packing, share_prompt=share)  # noqa: E731
        train_source, eval_source = (
            TokenPairs(train_pairs, collate, engine.device),
            TokenPairs(eval_pairs, collate, engine.device),
        )
    shape = "cached features" if features else "packed" if packing else "padded"
    if share:
        shape += f", each prompt once ({shared_fraction(train_pairs):.0%} of the tokens)"
    log(
        f"training: {total_steps} steps ({steps_per_epoch} per epoch), batch {t.batch_size} x {t.grad_accum} x {engine.world} pairs, "
        f"{engine.precision}, {engine.describe()}, {shape}{', length-grouped' if lengths else ''}"
    )

    def report(window: dict) -> None:
        seconds = window["seconds"]
        record = {
            "event": "train",
            "step": window["step"],
            "epoch": window["epoch"],
            "loss": window["loss_sum"] / window["pairs"],
            "accuracy": window["correct"] / window["decided"] if window["decided"] else None,
            "lr": window["lr"],
            "grad_norm": window["grad_norm"],
            "pairs_per_s": window["pairs"] / seconds,
        }
        if "tokens" in window:  # tokens computed; sequence tokens: what separate sequences would compute
            record["tokens_per_s"] = window["tokens"] / seconds
            record["sequence_tokens_per_s"] = window["sequence_tokens"] / seconds
        runlog.write(record)
        progress.report(record)  # the bar on a terminal, else a plain line (a batch job's log)

    def run_eval() -> dict:
        metrics = evaluate(
            engine, model, eval_source, t.batch_size * 2, tau, [p.meta for p in eval_pairs], [p.label for p in eval_pairs]
        )
        if metrics:
            runlog.write({"event": "eval", "step": state["step"], **{f"eval/{k}": v for k, v in metrics.items()}})
            shown = {k: v for k, v in metrics.items() if k not in ("pairs", "accuracy_pairs") and v is not None}
            log(f"eval @ step {state['step']}: " + ", ".join(f"{k} {v:.4f}" for k, v in shown.items()))
        return metrics

    best_weights = {}

    def save_best() -> None:
        """The best model so far: its trainable weights in memory when only the head trains, else a model folder."""
        if features:
            best_weights.update({k: v.detach().clone() for k, v in engine.unwrap(model).named_parameters() if v.requires_grad})
        else:
            save_full_model(output_dir / "best")

    def save_full_model(folder: Path) -> None:
        """The HF-style model folder; under a sharding engine the weights are first gathered from all ranks."""
        from gpmctl.models.io import save_model

        whole = engine.model_to_save(model)  # a collective: every rank takes part
        if engine.is_main:
            save_model(whole, folder, tokenizer)
        engine.wait()

    def checkpoint(reason: str) -> str:
        path = engine.save_state(ckpt.checkpoint_dir(output_dir, state["step"]), model, optimizer, scheduler, {**state, **layout})
        if engine.is_main:
            ckpt.prune_checkpoints(output_dir, max(t.keep_checkpoints, 1))
            runlog.write({"event": "checkpoint", "step": state["step"], "path": str(path), "reason": reason})
        engine.wait()
        return f"checkpoint {path}; continue with --resume auto"

    # 5. The loop: cached features train the head on one thread and keep no checkpoints (nothing to wait for on a stop).
    prepared = time.perf_counter()
    evaluation = Evaluation(run_eval, t.eval_steps or steps_per_epoch, t.keep_best, save_best) if len(eval_source) else None
    progress = TrainProgress(total_steps, state["step"], engine.is_main)
    with (
        contextlib.nullcontext() if features else StopFlag() as stop,
        progress,
        one_thread() if features else contextlib.nullcontext(),
    ):
        fit(
            engine,
            model,
            optimizer,
            scheduler,
            batches=batches,
            step=lambda index: pair_step(model, train_source.batch(index), tau, t.use_margin, t.center_rewards_coefficient),
            state=state,
            total_steps=total_steps,
            max_grad_norm=t.max_grad_norm,
            logging_steps=t.logging_steps,
            report=report,
            evaluation=evaluation,
            save_steps=t.save_steps,
            checkpoint=None if features else checkpoint,
            stop=stop,
            stop_after_steps=stop_after_steps,
            progress=progress,
        )
    timing["training_s"] = round(time.perf_counter() - prepared, 2)

    # 6. The final model: the last one, or the best evaluated one.
    final = evaluation.last if evaluation is not None and evaluation.last_step == state["step"] else None
    if final is None:  # no eval pairs, or resumed after the last step
        final = run_eval() if len(eval_source) else {}
    best = state["best"]
    use_best = t.keep_best and best is not None and best["step"] != state["step"]
    model_metrics = best["metrics"] if use_best else final
    if use_best:
        log(f"final model: the best eval checkpoint (step {best['step']}, accuracy {best['metrics']['accuracy']:.4f})")
    saving = time.perf_counter()
    if use_best and features:
        engine.unwrap(model).load_state_dict(best_weights, strict=False)
    if save and use_best and not features:
        if engine.is_main:
            from gpmctl.models.io import load_model, save_model

            # Built whole: a sharding engine would otherwise cut it, a collective rank 0 runs alone.
            save_model(engine.build(lambda: load_model(output_dir / "best", dtype="float32")), output_dir, tokenizer)
    elif save:
        save_full_model(output_dir)
    if save and engine.is_main and model_metrics.get("reward_std"):  # BT: OpenRLHF's normalisation statistics
        from gpmctl.models.io import record_reward_statistics

        record_reward_statistics(output_dir, model_metrics["reward_mean"], model_metrics["reward_std"])
        head = engine.unwrap(model).head
        head.reward_mean, head.reward_std = model_metrics["reward_mean"], model_metrics["reward_std"]
    timing.update(save_s=round(time.perf_counter() - saving, 2), total_s=round(time.perf_counter() - started, 2))
    if engine.is_main:
        summary = {
            "steps": state["step"],
            "model_eval": model_metrics,
            "final_eval": final,
            "best": best,
            "recipe": str(output_dir / "recipe.yaml"),
            "timing": timing,
        }
        (output_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
        runlog.write({"event": "done", **summary})
    engine.wait()
    runlog.close()
    in_memory = engine.unwrap(model) if engine.world == 1 and (features or not use_best) else None  # the saved model
    return TrainResult(output_dir, state["step"], model_metrics, best, model=in_memory, timing=timing)


def _resume_state(
    engine, candidates: list[Path], resume: str | None, layout: dict, fingerprint: dict, recipe: Recipe, objects: tuple
) -> tuple[dict, Path | None]:
    """The loop state to start from -> (state, the checkpoint it came from or None). The newest candidate that
    reads back restores (model, optimizer, scheduler); with --resume auto an unreadable one falls back to the
    one before it."""
    t = recipe.train
    for path in candidates:
        try:
            saved = ckpt.read_trainer_state(path)
            engine.check_resumable(saved, layout, path)
            _check_same_data(saved, fingerprint, recipe, path)
            state = engine.load_state(path, *objects)
        except ckpt.UnreadableCheckpoint as e:
            if resume != "auto":
                raise
            log(f"warning: {e}; trying the checkpoint before it")
            continue
        # Same global batch, other split over processes: the same pairs make each step; keep the position.
        state["micro_batch"] = state["micro_batch"] // saved.get("grad_accum", t.grad_accum) * t.grad_accum
        for key in layout:
            state.pop(key, None)
        state.setdefault("data_sha256", fingerprint)  # checkpoints written before it was recorded
        return state, path
    if candidates:
        raise ConfigError(
            f"{recipe.output_dir}: none of its {len(candidates)} checkpoints reads back (see the warnings); start again with --overwrite"
        )
    return {"step": 0, "epoch": 0, "micro_batch": 0, "best": None, "data_sha256": fingerprint}, None
