"""`gpmctl train-rm` with `model.freeze_backbone: true`: backbone features computed once, cached, and
only the preference head trained.

A frozen backbone gives every sequence fixed hidden states, and a head reads just two of them:
    read    [n, H]  the hidden state at the embedding position (last real token = EOS, or the first token)
    prompt  [n, H]  the hidden state at the prompt's last token (where the gate reads the prompt)
`cached_features` computes them once and stores them in a safetensors file under
~/.cache/gpmctl/features (or $GPMCTL_CACHE/features), named by a hash of the backbone's weights, the read
rule and the token ids of every sequence. Any later run on the same backbone and data (BT or GPM, any
dimension, gate or L2 variant, another seed: a seed changes the split, not the set of sequences) reuses
the file, and the head trains on [batch, H] rows in seconds (docs/results.md: 310 steps in 4-6 s).

The run follows gpmctl/train/reward.py step for step (same split, batches, AdamW and schedule, loss,
gradient accumulation and clipping, keep-best) and writes the same run folder: recipe.yaml,
environment.json, log.jsonl with the same events (so `gpmctl plot RUN_DIR` works), metrics.json with
`model_eval`, and the model folder every other command loads (the unchanged backbone + the trained
head). Trained with the same seed, it reaches the head the full model reaches with a frozen backbone
(tests/test_features.py). The backbone runs in eval mode (no dropout) for the features.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from gpmctl.config import Recipe, dump_recipe
from gpmctl.data.batches import epoch_batches
from gpmctl.data.tokenize import EncodedPair, EncodedSequence, SequenceEncoder, pad_sequences
from gpmctl.errors import ConfigError
from gpmctl.eval.metrics import agrees_with_label
from gpmctl.models.loading import build_model, load_tokenizer, save_model
from gpmctl.models.reward_model import HEAD_FILE, PreferenceModel, PreferenceOutput, read_positions
from gpmctl.train import checkpoint as ckpt
from gpmctl.train.loop import backward_step
from gpmctl.train.reward import (
    TrainResult,
    check_benchmark_files,
    load_pairs,
    optimisation,
    pair_loss,
    pair_metrics,
)  # fmt: skip
from gpmctl.utils import RunLog, environment_report, log, output_folder, quiet_libraries

EXTRACT_BATCH = 16
"""Sequences per backbone forward pass while extracting (length-sorted, so little padding)."""


@dataclass
class Features:
    """Backbone hidden states of n sequences, float32: read [n, H] and prompt [n, H]."""

    read: torch.Tensor
    prompt: torch.Tensor
    seconds: float = 0.0  # time spent computing them (0 when they came from the cache)
    cached: bool = False  # read from the cache file
    path: Path | None = None  # the cache file

    def rows(self, index: torch.Tensor | list[int]) -> "Features":
        return Features(self.read[index], self.prompt[index])


@dataclass
class HeadRun(TrainResult):
    """A frozen-backbone run: TrainResult plus the trained model and where the time went."""

    model: PreferenceModel | None = None
    timing: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------
# Features


def cache_root() -> Path:
    return Path(os.environ.get("GPMCTL_CACHE", Path.home() / ".cache" / "gpmctl")) / "features"


def backbone_fingerprint(model: PreferenceModel) -> str:
    """sha256 of the backbone's weights (names, dtypes, bytes): the cache never serves another model's features."""
    digest = hashlib.sha256()
    for name, tensor in model.backbone.state_dict().items():
        digest.update(f"{name}:{tensor.dtype}:{list(tensor.shape)}".encode())
        digest.update(tensor.detach().contiguous().cpu().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _sequence_digest(seq: EncodedSequence) -> bytes:
    return hashlib.sha1(seq.ids.tobytes() + seq.prompt_end.to_bytes(4, "little")).digest()


@torch.no_grad()
def extract_features(model: PreferenceModel, seqs: list[EncodedSequence], pad_id: int, batch_size: int = EXTRACT_BATCH) -> Features:
    """Run the backbone over `seqs` in length-sorted, left-padded batches, as PreferenceModel.forward does
    (positions count real tokens only), and keep the hidden states the head reads."""
    was_training = model.training
    model.eval()
    hidden_size = model.value_head.in_features
    read, prompt = torch.empty(len(seqs), hidden_size), torch.empty(len(seqs), hidden_size)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i].ids))
    started, last_report = time.perf_counter(), time.perf_counter()
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = pad_sequences([seqs[i] for i in idx], pad_id)
        mask = batch["attention_mask"]
        kwargs = {"position_ids": (mask.cumsum(-1) - 1).clamp(min=0)} if model._takes_position_ids else {}
        hidden = model.backbone(input_ids=batch["input_ids"], attention_mask=mask, **kwargs).last_hidden_state
        rows = torch.arange(len(idx))
        read[idx] = hidden[rows, read_positions(mask, model.head.pool)].float()
        prompt[idx] = hidden[rows, batch["prompt_end"]].float()
        if time.perf_counter() - last_report > 60:
            done = start + len(idx)
            log(f"features: {done}/{len(seqs)} sequences ({done / (time.perf_counter() - started):.2f}/s)")
            last_report = time.perf_counter()
    model.train(was_training)
    return Features(read, prompt, seconds=time.perf_counter() - started)


def cached_features(model: PreferenceModel, seqs: list[EncodedSequence], pad_id: int, cache_dir: Path | None = None) -> Features:
    """Features of `seqs` (in their order) from the cache file for this backbone and set of sequences, or
    computed and written there. The file's rows are the distinct sequences in digest order, so the same
    set of sequences in any order or split finds the same file."""
    from safetensors.torch import load_file, save_file

    digests = [_sequence_digest(s) for s in seqs]
    distinct = sorted(set(digests))
    key = hashlib.sha256(f"{backbone_fingerprint(model)}:{model.head.pool}".encode() + b"".join(distinct)).hexdigest()[:24]
    path = (cache_dir or cache_root()) / f"{key}.safetensors"
    row_of = {d: i for i, d in enumerate(distinct)}
    index = torch.tensor([row_of[d] for d in digests], dtype=torch.long)
    if path.is_file():
        stored = load_file(str(path))
        log(f"features: {len(distinct)} sequences from the cache ({path})")
        return Features(stored["read"][index], stored["prompt"][index], cached=True, path=path)
    first = {d: i for i, d in reversed(list(enumerate(digests)))}  # one occurrence of each distinct sequence
    log(f"features: computing {len(distinct)} sequences with the frozen backbone (cached in {path})")
    computed = extract_features(model, [seqs[first[d]] for d in distinct], pad_id)
    log(f"features: {len(distinct)} sequences in {computed.seconds:.1f}s ({len(distinct) / max(computed.seconds, 1e-9):.2f}/s)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    save_file({"read": computed.read.contiguous(), "prompt": computed.prompt.contiguous()}, str(tmp))
    os.replace(tmp, path)
    return Features(computed.read[index], computed.prompt[index], seconds=computed.seconds, path=path)


class HeadOnFeatures(nn.Module):
    """The model's head, called like the model with backbone features in place of tokens:
    forward(read [n, H], attention_mask=None, prompt [n, H]) -> PreferenceOutput. It lets the training
    step and loss of gpmctl.train.reward (`pair_loss`) run unchanged on cached features."""

    def __init__(self, model: PreferenceModel):
        super().__init__()
        self.model = model
        self.head = model.head

    def forward(self, read: torch.Tensor, attention_mask=None, prompt: torch.Tensor | None = None, cu_seqlens=None) -> PreferenceOutput:
        dtype = self.model.value_head.weight.dtype
        return self.model._head(read.to(dtype), prompt.to(dtype) if prompt is not None else None)


def feature_batch(chosen: Features, rejected: Features, margin: torch.Tensor, label: torch.Tensor) -> dict:
    """B pairs as the batch `pair_loss` takes: rows 0..B-1 chosen, B..2B-1 rejected."""
    return {"input_ids": torch.cat([chosen.read, rejected.read]), "attention_mask": None,
            "prompt_end": torch.cat([chosen.prompt, rejected.prompt]), "margin": margin, "label": label}  # fmt: skip


@contextlib.contextmanager
def one_thread():
    """Torch on one thread inside the block: a head step is a few small matmuls, and more threads only
    add synchronisation (several times slower on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------------------
# The run


def train_head_on_features(recipe: Recipe, overwrite: bool = False, resume: str | None = None, save: bool = True,
                           pairs: tuple[list[EncodedPair], list[EncodedPair]] | None = None) -> HeadRun:  # fmt: skip
    """Train the head of `recipe` (model.freeze_backbone: true) on cached backbone features; see the module
    docstring. `save=False` leaves the model folder out; `pairs`: the (train, eval) pairs as `load_pairs`
    encodes them for this recipe, when the caller has them already (the results grid: one tokenisation
    for every head of a seed). From its first write in output_dir to its end the run holds output_dir/.lock."""
    lock = ckpt.RunLock(recipe.output_dir)
    try:
        return _train_head(recipe, overwrite, resume, save, pairs, lock)
    finally:
        lock.release()


def _train_head(recipe: Recipe, overwrite: bool, resume: str | None, save: bool,
                pairs: tuple[list[EncodedPair], list[EncodedPair]] | None, lock: ckpt.RunLock) -> HeadRun:  # fmt: skip
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    m, d, t = recipe.model, recipe.data, recipe.train
    if not m.freeze_backbone:
        raise ConfigError("train_head_on_features needs model.freeze_backbone: true")
    if resume not in (None, "none"):
        raise ConfigError("--resume: a frozen-backbone run keeps no checkpoints (the head trains in seconds); use --overwrite")
    quiet_libraries()
    started = time.perf_counter()
    output_dir = output_folder(recipe.output_dir, getattr(recipe, "source", "recipe"))
    earlier = (output_dir / HEAD_FILE).exists() or (output_dir / "metrics.json").exists()
    if earlier and not overwrite:
        raise ConfigError(f"{output_dir}: already holds a run; pass --overwrite to start again")
    accelerator = Accelerator(gradient_accumulation_steps=t.grad_accum, cpu=True)
    lock.acquire(accelerator, create=False)  # a folder another run is writing to is refused before any work
    check_benchmark_files(recipe)
    set_seed(t.seed)

    # Data and the frozen model, read before anything in output_dir is written or deleted.
    tokenizer = load_tokenizer(m.tokenizer or m.backbone, m.trust_remote_code)
    encoder = SequenceEncoder(tokenizer, d.max_length, m.eos, m.gate_prompt, d.truncation)
    train_pairs, eval_pairs = pairs or load_pairs(recipe, encoder)
    model = build_model(m, tokenizer, t.seed)
    lock.acquire(accelerator)
    if earlier:
        (output_dir / HEAD_FILE).unlink(missing_ok=True)
        (output_dir / "log.jsonl").unlink(missing_ok=True)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "recipe.yaml").write_text(dump_recipe(recipe))
    (output_dir / "environment.json").write_text(json.dumps(environment_report(), indent=2))
    runlog = RunLog(output_dir / "log.jsonl")
    log(f"data: {len(train_pairs)} train pairs, {len(eval_pairs)} eval pairs; model: {m.backbone} (frozen), head {model.head}")
    prepared = time.perf_counter()

    # Features: train chosen, train rejected, eval chosen, eval rejected, in that order.
    pairs = train_pairs + eval_pairs
    features = cached_features(model, [p.chosen for p in pairs] + [p.rejected for p in pairs], tokenizer.pad_token_id)
    n, n_train = len(pairs), len(train_pairs)
    chosen, rejected = features.rows(list(range(n))), features.rows(list(range(n, 2 * n)))
    margin = torch.tensor([p.margin for p in pairs], dtype=torch.float32)
    label = torch.tensor([p.label for p in pairs], dtype=torch.float32)
    featured = time.perf_counter()

    # Optimiser and schedule exactly as train_reward_model builds them (only the head has gradients).
    head = HeadOnFeatures(model)
    # The plain shuffled batches (length grouping saves padding, and features have none).
    batches_of = lambda epoch: epoch_batches(n_train, t.batch_size, t.seed, epoch)  # noqa: E731
    steps_per_epoch, total_steps, optimizer, scheduler = optimisation(model, t, len(batches_of(0)), n_train)
    head, optimizer = accelerator.prepare(head, optimizer)
    tau = m.resolved_tau()
    eval_every = t.eval_steps or steps_per_epoch
    eval_index = list(range(n_train, n))
    log(f"training the head: {total_steps} steps ({steps_per_epoch} per epoch), batch {t.batch_size} x {t.grad_accum} pairs")

    def pairs_batch(index: list[int]) -> dict:
        return feature_batch(chosen.rows(index), rejected.rows(index), margin[index], label[index])

    @torch.no_grad()
    def run_eval(step: int) -> dict:
        if not eval_index:
            return {}
        _, scores = pair_loss(head, pairs_batch(eval_index), tau, use_margin=False)
        metrics = pair_metrics(scores, tau, [p.meta for p in eval_pairs], label[eval_index].tolist())
        runlog.write({"event": "eval", "step": step, **{f"eval/{k}": v for k, v in metrics.items()}})
        return metrics

    step, best, final = 0, None, {}
    window = {"loss": 0.0, "correct": 0.0, "decided": 0, "pairs": 0, "started": time.perf_counter()}
    with one_thread():
        for epoch in range(math.ceil(total_steps / steps_per_epoch)):
            batches = batches_of(epoch)[: steps_per_epoch * t.grad_accum]
            for micro, index in enumerate(batches):
                with accelerator.accumulate(head):
                    loss, score = pair_loss(head, pairs_batch(index), tau, t.use_margin)
                    grad_norm = backward_step(accelerator, head, optimizer, loss, t.max_grad_norm, step=step + 1)
                window["loss"] += float(loss.detach()) * len(index)
                window["correct"] += float(agrees_with_label(score, label[index]).sum())
                window["decided"] += int((label[index] != 0.5).sum())
                window["pairs"] += len(index)
                if not accelerator.sync_gradients:
                    continue
                scheduler.step()
                step += 1
                if step % t.logging_steps == 0 or step == total_steps:
                    seconds = time.perf_counter() - window["started"]
                    runlog.write({"event": "train", "step": step, "epoch": round(epoch + (micro + 1) / len(batches), 4),
                                  "loss": window["loss"] / window["pairs"],
                                  "accuracy": window["correct"] / window["decided"] if window["decided"] else None,
                                  "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm) if grad_norm is not None else None,
                                  "pairs_per_s": window["pairs"] / seconds})  # fmt: skip
                    window = {"loss": 0.0, "correct": 0.0, "decided": 0, "pairs": 0, "started": time.perf_counter()}
                if step % eval_every == 0 or step == total_steps:
                    final = run_eval(step)
                    key = (final["accuracy"] or 0.0, -final["loss"]) if final else None
                    if final and t.keep_best and (best is None or key > tuple(best["key"])):
                        heads = {k: v.detach().clone() for k, v in model.state_dict().items() if k.endswith("_head.weight")}
                        best = {"key": list(key), "step": step, "metrics": final, "weights": heads}
                if step == total_steps:
                    break
            if step == total_steps:
                break
    trained = time.perf_counter()

    model_metrics = final
    if best is not None and best["step"] != step:
        log(f"final model: the best eval step ({best['step']}, accuracy {best['metrics']['accuracy']:.4f})")
        model.load_state_dict(best["weights"], strict=False)
        model_metrics = best["metrics"]
    if best is not None:
        best = {k: v for k, v in best.items() if k != "weights"}
    if save:
        save_model(model, output_dir, tokenizer)
    timing = {"prepare_s": round(prepared - started, 2), "features_s": round(features.seconds, 2), "features_cached": features.cached,
              "features_file": str(features.path), "features_total_s": round(featured - prepared, 2),
              "head_training_s": round(trained - featured, 2), "save_s": round(time.perf_counter() - trained, 2),
              "total_s": round(time.perf_counter() - started, 2)}  # fmt: skip
    if final:
        shown = {k: v for k, v in model_metrics.items() if k not in ("pairs", "accuracy_pairs") and v is not None}
        log("eval: " + ", ".join(f"{k} {v:.4f}" for k, v in shown.items())
            + f" (head trained in {timing['head_training_s']:.1f}s)")  # fmt: skip
    summary = {"steps": step, "model_eval": model_metrics, "final_eval": final, "best": best,
               "recipe": str(output_dir / "recipe.yaml"), "timing": timing}  # fmt: skip
    (output_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
    runlog.write({"event": "done", **summary})
    runlog.close()
    return HeadRun(output_dir, step, model_metrics, best, model=model, timing=timing)
