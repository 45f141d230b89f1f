"""Training a head on a frozen backbone's cached features: the `model.freeze_backbone: true` batch source
of `gpmctl train-rm` (gpmctl/train/reward.py).

A frozen backbone gives every sequence fixed hidden states, and a head reads just two of them:
    read    [n, H]  the hidden state at the embedding position (last real token = EOS, or the first token)
    prompt  [n, H]  the hidden state at the prompt's last token (where the gate reads the prompt)
`cached_features` computes them once (`PreferenceModel.encode`, the model's first stage) and stores them in
a safetensors file under ~/.cache/gpmctl/features (or $GPMCTL_CACHE/features), named by a hash of the
backbone's weights, the read rule and the token ids of every sequence. Any later run on the same backbone
and data (BT or GPM, any dimension, gate or L2 variant, another seed: a seed changes the split, not the set
of sequences) reuses the file, and `FeaturePairs` hands the head [batch, H] rows: the same step, loop and
run folder as training on tokens, in seconds (docs/results.md: 310 steps in 4-6 s). Trained with the same
seed, it reaches the head the full model reaches with a frozen backbone (tests/test_features.py). The
backbone runs in eval mode (no dropout) for the features.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from gpmctl.data.tokenize import EncodedPair, EncodedSequence, pack_groups, pad_sequences
from gpmctl.models.model import Hidden, PreferenceModel
from gpmctl.utils import log

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
def extract_features(
    model: PreferenceModel, seqs: list[EncodedSequence], pad_id: int, batch_size: int = EXTRACT_BATCH
) -> Features:
    """Run the backbone over `seqs` (`PreferenceModel.encode`, the first stage of the model) and keep the
    hidden states the head reads: where the backbone packs, sequences that start with the same prompt go
    through it as shared-prompt rows (the prompt once, gpmctl.models.packing); otherwise in length-sorted,
    left-padded batches."""
    was_training = model.training
    model.eval()
    hidden_size = model.value_head.in_features
    read, prompt = torch.empty(len(seqs), hidden_size), torch.empty(len(seqs), hidden_size)
    device = model.value_head.weight.device
    started, last_report = time.perf_counter(), time.perf_counter()
    done = 0
    for idx in _batches(seqs, batch_size, shared=model.enable_packing()):
        if isinstance(idx[0], list):  # groups of sequences sharing a prompt
            batch = pack_groups([[seqs[i] for i in group] for group in idx])
            hidden = model.encode(
                batch["input_ids"].to(device), prompt_end=batch["prompt_end"].to(device), row=batch["row"].to(device)
            )
            idx = [i for group in idx for i in group]
        else:
            batch = {k: v.to(device) for k, v in pad_sequences([seqs[i] for i in idx], pad_id).items()}
            hidden = model.encode(batch["input_ids"], batch["attention_mask"], batch["prompt_end"])
        read[idx], prompt[idx] = hidden.read.float().cpu(), hidden.prompt.float().cpu()
        done += len(idx)
        if time.perf_counter() - last_report > 60:
            log(f"features: {done}/{len(seqs)} sequences ({done / (time.perf_counter() - started):.2f}/s)")
            last_report = time.perf_counter()
    model.train(was_training)
    return Features(read, prompt, seconds=time.perf_counter() - started)


def _batches(seqs: list[EncodedSequence], batch_size: int, shared: bool) -> list:
    """Index batches of about `batch_size` sequences: length-sorted lists of indices, or (`shared`) lists of
    groups, a group being the sequences with the same tokens up to the gate's prompt position (a pair's
    two sequences, or more where several pairs share a prompt), at most `batch_size` long."""
    if not shared:
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i].ids))
        return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    by_prompt: dict[bytes, list[int]] = {}
    for i, s in enumerate(seqs):
        by_prompt.setdefault(s.ids[: s.prompt_end + 1].tobytes(), []).append(i)
    groups = [g[start : start + batch_size] for g in by_prompt.values() for start in range(0, len(g), batch_size)]
    groups.sort(key=lambda g: sum(len(seqs[i].ids) for i in g))
    batches, current, size = [], [], 0
    for group in groups:
        if current and size + len(group) > batch_size:
            batches.append(current)
            current, size = [], 0
        current.append(group)
        size += len(group)
    return batches + ([current] if current else [])


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


class FeaturePairs:
    """Pairs as cached backbone features: the batches `gpmctl.train.reward.pair_loss` takes, with the hidden
    states of [chosen; rejected] (`hidden`) where a token batch has token ids."""

    def __init__(self, chosen: Features, rejected: Features, pairs: list[EncodedPair]):
        self.chosen, self.rejected = chosen, rejected
        self.margin = torch.tensor([p.margin for p in pairs], dtype=torch.float32)
        self.label = torch.tensor([p.label for p in pairs], dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.margin)

    def batch(self, index: list[int]) -> dict:
        c, r = self.chosen.rows(index), self.rejected.rows(index)
        hidden = Hidden(torch.cat([c.read, r.read]), torch.cat([c.prompt, r.prompt]))
        return {"hidden": hidden, "margin": self.margin[index], "label": self.label[index]}


def feature_pairs(
    model: PreferenceModel, train: list[EncodedPair], held: list[EncodedPair], pad_id: int
) -> tuple[FeaturePairs, FeaturePairs, dict]:
    """The train and eval pairs as FeaturePairs of `model`'s (frozen) backbone, from the cache or computed
    into it -> (train, eval, timing: features_s, features_cached, features_file, features_total_s)."""
    started = time.perf_counter()
    pairs = train + held
    features = cached_features(model, [p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id)
    n = len(pairs)

    def source(index: range, subset: list[EncodedPair]) -> FeaturePairs:
        return FeaturePairs(features.rows(list(index)), features.rows([n + i for i in index]), subset)

    timing = {
        "features_s": round(features.seconds, 2),
        "features_cached": features.cached,
        "features_file": str(features.path),
        "features_total_s": round(time.perf_counter() - started, 2),
    }
    return source(range(len(train)), train), source(range(len(train), n), held), timing


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
