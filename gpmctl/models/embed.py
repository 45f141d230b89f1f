"""K responses per prompt -> values and gates -> all K x K scores: how every command scores groups of responses
(`gpmctl score`, every `gpmctl eval` benchmark, the GPO judge).

    scorer = load_scorer("runs/gpm", batch_size=32, max_length=2048)
    value, gate = scorer.embed(prompts, responses)   # prompts [n], responses [n][K]: each response embedded ONCE
    S = scorer.score_matrix(value, gate)             # [n, K, K], S[:, i, j] = s(y_i > y_j), float64

K responses cost K forward passes, not K^2: the K x K scores are 2k-dimensional arithmetic on the embeddings
(gpmctl.models.heads). With `share_prompt` (causal decoders that pack, the default), a group's K sequences
go through the model as one packed row holding their prompt once (`embed_groups`); otherwise in
length-sorted padded batches (`embed_sequences`). The gate is one per prompt (`PreferenceHead.prompt_gate`
of the K passes' gates).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gpmctl.data.tokenize import EncodedSequence, SequenceEncoder, pack_groups, pad_sequences


@torch.no_grad()
def embed_sequences(
    model, seqs: list[EncodedSequence], batch_size: int, pad_id: int, device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sequences -> value [N, 2k] (BT: [N]) and the gate read in each pass [N, k] (or None), float32 on the CPU,
    in input order. Batches of `batch_size` sequences sorted by length."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i].ids))
    values, gates = [None] * len(seqs), [None] * len(seqs)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = {k: v.to(device) for k, v in pad_sequences([seqs[i] for i in idx], pad_id).items()}
        out = model(batch["input_ids"], batch["attention_mask"], batch["prompt_end"])
        value = out.value.float().cpu()
        gate = None if out.gate is None else out.gate.float().cpu()
        for j, i in enumerate(idx):
            values[i] = value[j]
            gates[i] = None if gate is None else gate[j]
    return torch.stack(values), None if gates[0] is None else torch.stack(gates)


@torch.no_grad()
def embed_groups(model, groups: list[list[EncodedSequence]], batch_size: int, device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Groups of sequences sharing a prompt -> as `embed_sequences`, in group-major order. Whole groups go
    into packed rows of about `batch_size` sequences, each group's common prompt computed once (`pack_groups`;
    the model must `enable_packing()`)."""
    values, gates = [], []
    start = 0
    while start < len(groups):
        stop, sequences = start, 0
        while stop < len(groups) and (sequences == 0 or sequences + len(groups[stop]) <= batch_size):
            sequences += len(groups[stop])
            stop += 1
        batch = pack_groups(groups[start:stop])
        out = model(batch["input_ids"].to(device), prompt_end=batch["prompt_end"].to(device), row=batch["row"].to(device))
        values.append(out.value.float().cpu())
        gates.append(None if out.gate is None else out.gate.float().cpu())
        start = stop
    return torch.cat(values), None if gates[0] is None else torch.cat(gates)


@dataclass
class Scorer:
    """A loaded preference model with its encoder (the model's token rules) and batch settings."""

    model: object  # gpmctl.models.model.PreferenceModel
    encoder: SequenceEncoder
    batch_size: int
    device: str | torch.device
    share_prompt: bool = False
    """Embed each group as one packed row with its prompt once (the model must `enable_packing()`)."""
    folder: Path | None = None
    """The model folder it was loaded from (for the provenance of results)."""
    started: float = field(default_factory=time.time)
    """When it was loaded: results report the wall time since."""
    deterministic: bool = False
    """Loaded for bit-stable reruns (`make_deterministic`, the heads in fp32)."""
    last_cut: list[int] = field(default_factory=list)
    """Per prompt of the last `embed` call: how many of its sequences were cut at max_length."""
    cache: dict | None = None
    """(token ids, gate position) -> (value, gate read in its pass): with a dict, each distinct sequence is embedded
    once over all calls (`gpmctl eval suite`: benchmarks that share responses)."""

    @property
    def head(self):
        return self.model.head

    @property
    def kind(self) -> str:
        return self.model.head.kind

    @property
    def tau(self) -> float:
        return float(self.model.head.tau)

    def embed(
        self, prompts: list[list[dict]], responses: list[list[list[dict]]], where: str = ""
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """prompts [n] (message lists), responses [n][K] (message lists, the same K for every prompt) ->
        value [n, K, 2k] (BT: [n, K]) and one gate per prompt [n, k] (or None), float64. `last_cut` then holds how
        many of each prompt's sequences were cut at max_length (the evaluators' per-example `truncated`)."""
        seqs, self.last_cut = [], []
        for i, (p, rs) in enumerate(zip(prompts, responses)):
            before = self.encoder.truncated
            seqs.append([self.encoder.encode(p, r, f"{where} row {i + 1}".strip()) for r in rs])
            self.last_cut.append(self.encoder.truncated - before)
        return self.embed_encoded(seqs)

    def embed_encoded(self, groups: list[list[EncodedSequence]]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Encoded groups [n][K] (sequence k of group i: prompt i with its k-th response) -> as `embed`."""
        n, K = len(groups), len(groups[0])
        value, gate = self.sequence_embeddings(groups)
        value = value.double().view(n, K, *value.shape[1:])
        gate = self.model.head.prompt_gate(None if gate is None else gate.double().view(n, K, -1))
        return value, gate

    def embed_ragged(self, groups: list[list[EncodedSequence]]) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """Groups of any sizes (`gpmctl serve` batches several requests) -> per group (value [K, 2k] or BT [K],
        its prompt's gate [k] or None), float64."""
        value, gate = self.sequence_embeddings(groups)
        out, start = [], 0
        for group in groups:
            stop = start + len(group)
            gates = None if gate is None else gate[start:stop].double()
            out.append((value[start:stop].double(), self.model.head.prompt_gate(gates)))
            start = stop
        return out

    def sequence_embeddings(self, groups: list[list[EncodedSequence]]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Every sequence of `groups`, in group-major order -> value [N, ...] and the gate read in its pass [N, k] or
        None, float32: packed rows (`share_prompt`) or padded batches. With a `cache`, a sequence embedded before
        (same tokens and gate position) is taken from it, and only the others are computed."""
        if self.cache is None:
            return self._compute(groups)
        keys = [[(s.ids.tobytes(), s.prompt_end) for s in g] for g in groups]
        missing, seen = [], set()
        for group, group_keys in zip(groups, keys):
            new = [(s, k) for s, k in zip(group, group_keys) if k not in self.cache and k not in seen]
            seen.update(k for _, k in new)
            if new:
                missing.append(new)
        if missing:
            value, gate = self._compute([[s for s, _ in group] for group in missing])
            for i, (_, k) in enumerate(pair for group in missing for pair in group):
                self.cache[k] = (value[i], None if gate is None else gate[i])
        rows = [self.cache[k] for group_keys in keys for k in group_keys]
        return torch.stack([v for v, _ in rows]), None if rows[0][1] is None else torch.stack([g for _, g in rows])

    def _compute(self, groups: list[list[EncodedSequence]]) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.share_prompt:
            return embed_groups(self.model, groups, self.batch_size, self.device)
        flat = [s for group in groups for s in group]
        return embed_sequences(self.model, flat, self.batch_size, self.encoder.tokenizer.pad_token_id, self.device)

    def score_matrix(self, value: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
        """value [n, K, 2k] (BT [n, K]), gate [n, k] -> S [n, K, K], S[:, i, j] = s(i > j)."""
        return self.model.head.score_matrix(value, gate)

    def pair_scores(
        self, prompts: list[list[dict]], chosen: list[list[dict]], rejected: list[list[dict]], where: str = ""
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """n pairs -> (s(chosen > rejected) [n], value [n, 2, 2k] or BT rewards [n, 2]), float64."""
        value, gate = self.embed(prompts, [[c, r] for c, r in zip(chosen, rejected)], where)
        return self.score_matrix(value, gate)[:, 0, 1], value


def load_scorer(
    model: str,
    batch_size: int,
    max_length: int,
    dtype: str = "auto",
    device: str = "auto",
    share_prompt: bool | str = "auto",
    deterministic: bool = False,
) -> Scorer:
    """Load a model folder with its tokenizer and an encoder built from the model's head settings (its EOS and
    gate-position rules; right truncation at `max_length` tokens). `share_prompt`: auto (on where the
    backbone packs: causal decoders with sdpa attention), true (an error where it cannot) or false."""
    from gpmctl.models.io import load_model, model_folder
    from gpmctl.models.sources import load_tokenizer
    from gpmctl.utils import quiet_libraries, resolve_device

    quiet_libraries()
    device = resolve_device(device)
    started = time.time()
    if deterministic:
        make_deterministic()
    folder = model_folder(model)  # a hub id is fetched once, here
    net = load_model(folder, dtype=dtype, device=device)
    if deterministic:  # the heads in fp32: apply_head casts the hidden states to the heads' dtype
        for layer in (net.value_head, net.prompt_head):
            if layer is not None:
                layer.float()
    tokenizer = load_tokenizer(str(folder))
    encoder = model_encoder(net, tokenizer, max_length)
    return Scorer(
        net, encoder, batch_size, device, resolve_share_prompt(net, share_prompt, model), folder, started, deterministic
    )


def make_deterministic() -> None:
    """Bit-stable reruns: deterministic algorithms (an error where an op has none), cuBLAS's fixed workspace,
    no TF32, no cuDNN autotuning. Batch composition still matters: run with the same batch size."""
    import os

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts: before any CUDA work
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def model_encoder(model, tokenizer, max_length: int, truncation: str = "right") -> SequenceEncoder:
    """The encoder a loaded model reads with: its head's EOS and gate rules, and the pad token its config names
    (the one transformers' sequence classifiers skip when they look for the last token)."""
    pad = getattr(model.base_model.config, "pad_token_id", None)
    return SequenceEncoder(tokenizer, max_length, model.head.eos, model.head.gate_prompt, truncation, pad_id=pad)


def resolve_share_prompt(model, setting: bool | str, where: str) -> bool:
    """`share_prompt` auto/true/false -> whether `model` (a PreferenceModel) embeds groups as shared-prompt rows;
    packing is switched on for it. true on a backbone that cannot pack is an error naming `where`."""
    from gpmctl.errors import ConfigError

    setting = {"auto": "auto", "true": True, "false": False}.get(setting, setting) if isinstance(setting, str) else setting
    if setting not in ("auto", True, False):
        raise ConfigError(f"share_prompt: expected auto, true or false, got {setting!r}")
    if setting is False:
        return False
    if model.enable_packing():
        return True
    if setting is True:
        raise ConfigError(
            f"{where}: share_prompt=true: the backbone cannot run packed rows (it needs a causal decoder with sdpa attention)"
        )
    return False
