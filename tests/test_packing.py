"""Padding-free packing and length-grouped batches: same embeddings and gradients as padding, no attention
across sequences, deterministic batches."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from gpmctl.config import ModelConfig, TinyBackbone
from gpmctl.data.batches import epoch_batches
from gpmctl.data.tokenize import EncodedPair, EncodedSequence, collate_pairs, real_tokens
from gpmctl.models.build import build_model
from gpmctl.models.heads import HeadConfig
from gpmctl.models.model import PreferenceModel
from gpmctl.models.packing import PackedRow
from gpmctl.models.sources import load_tokenizer
from gpmctl.train.reward import pair_loss

# float32: packed and padded runs sum the same products in another order (other matmul shapes), so they
# agree to rounding, not bit for bit. Observed differences are ~1e-7; 2e-5 leaves room across CPUs.
ATOL = 2e-5


def random_pairs(vocab: int, lengths: list[tuple[int, int]], seed: int = 0) -> list[EncodedPair]:
    """Pairs of random token ids; (chosen, rejected) lengths as given, the prompt ending at token 3."""
    rng = np.random.default_rng(seed)
    seq = lambda n: EncodedSequence(rng.integers(3, vocab, n).astype(np.int32), prompt_end=3)  # noqa: E731
    return [EncodedPair(seq(a), seq(b)) for a, b in lengths]


LENGTHS = [(7, 31), (19, 5), (40, 12), (9, 9)]


def tiny_model(kind: str, gate: bool):
    tok = load_tokenizer("tiny")
    shape = TinyBackbone(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2)  # GQA too
    model = build_model(ModelConfig(kind=kind, dim=8, gate=gate, tiny=shape), tok, seed=0)
    model.value_head.weight.data.normal_(0, 0.3)  # a head large enough that differences would show
    if model.prompt_head is not None:
        model.prompt_head.weight.data.normal_(0, 0.3)
    return model, tok


def outputs_and_grads(model, batch, tau: float):
    model.zero_grad(set_to_none=True)
    out = model(batch["input_ids"], batch.get("attention_mask"), batch["prompt_end"], row=batch.get("row"))
    loss, _ = pair_loss(model, batch, tau, use_margin=False)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, loss.detach(), grads


@pytest.mark.parametrize("kind,gate", [("gpm", True), ("bt", False)])
def test_packed_batches_give_the_padded_embeddings_gate_and_gradients(kind, gate):
    model, tok = tiny_model(kind, gate)
    pairs = random_pairs(len(tok), LENGTHS)
    padded = collate_pairs(pairs, tok.pad_token_id)  # left padding, as in training before packing
    ref_out, ref_loss, ref_grads = outputs_and_grads(model, padded, model.head.tau)
    assert model.enable_packing()
    packed = collate_pairs(pairs, tok.pad_token_id, packed=True)
    assert packed["input_ids"].shape == (1, sum(a + b for a, b in LENGTHS)) and real_tokens(packed) == real_tokens(padded)
    out, loss, grads = outputs_and_grads(model, packed, model.head.tau)
    torch.testing.assert_close(out.value, ref_out.value, atol=ATOL, rtol=0)
    if gate:
        torch.testing.assert_close(out.gate, ref_out.gate, atol=ATOL, rtol=0)
    torch.testing.assert_close(loss, ref_loss, atol=ATOL, rtol=0)
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=ATOL, rtol=1e-4, msg=name)
    assert ref_out.value.std() > 1e-3  # the comparison is not between constants


def test_a_padded_batch_is_unchanged_once_packing_is_enabled():
    """The packing attention falls back to transformers' sdpa for padded batches: every other command
    (score, eval) gives bit-identical results on a model that trained packed."""
    model, tok = tiny_model("gpm", True)
    padded = collate_pairs(random_pairs(len(tok), LENGTHS), tok.pad_token_id)
    with torch.no_grad():
        before = model(padded["input_ids"], padded["attention_mask"], padded["prompt_end"])
        model.enable_packing()
        after = model(padded["input_ids"], padded["attention_mask"], padded["prompt_end"])
    assert torch.equal(before.value, after.value) and torch.equal(before.gate, after.gate)


def test_no_attention_crosses_sequences_in_a_packed_row():
    model, tok = tiny_model("gpm", True)
    model.enable_packing()
    pairs = random_pairs(len(tok), LENGTHS)
    changed = random_pairs(len(tok), LENGTHS, seed=1)
    changed[1:] = pairs[1:]  # only pair 0 (sequences 0 and 4 of the packed row) differs
    with torch.no_grad():
        a = model(**{k: v for k, v in collate_pairs(pairs, 0, packed=True).items() if k not in ("margin", "label")})
        b = model(**{k: v for k, v in collate_pairs(changed, 0, packed=True).items() if k not in ("margin", "label")})
    others = [i for i in range(2 * len(LENGTHS)) if i not in (0, len(LENGTHS))]
    torch.testing.assert_close(a.value[others], b.value[others], atol=1e-6, rtol=0)
    torch.testing.assert_close(a.gate[others], b.gate[others], atol=1e-6, rtol=0)
    assert (a.value[0] - b.value[0]).abs().max() > 1e-3  # the changed sequence itself did change


def test_encoders_are_not_packed(tmp_path):
    from transformers import AutoModel, BertConfig

    bert = AutoModel.from_config(
        BertConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2),
        attn_implementation="sdpa",
    )
    assert not PreferenceModel(bert, HeadConfig(pool="first")).enable_packing()


# Tiny random backbones shaped like the families packing meets: sliding windows on every layer, from a layer
# on, alternating with full layers, or known only to the mask builder (Qwen2-MoE passes no window to its
# attention); Gemma's query_pre_attn_scalar scaling; GQA everywhere. Windows of 4 on sequences up to 31 long.
SMALL = dict(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    initializer_range=0.2,
    attn_implementation="sdpa",
)
ALTERNATING = ["sliding_attention", "full_attention"]
FAMILIES = {
    "llama": ("LlamaConfig", dict(attention_dropout=0.5)),  # dropout is off in eval, packed or not
    "gemma": ("GemmaConfig", {}),  # embeddings scaled by sqrt(hidden), GeGLU
    "mistral_window_4": ("MistralConfig", dict(sliding_window=4)),
    "qwen2": ("Qwen2Config", dict(sliding_window=4)),  # use_sliding_window is off: full attention
    "qwen2_window_4_from_layer_1": ("Qwen2Config", dict(use_sliding_window=True, sliding_window=4, max_window_layers=1)),
    "qwen2_moe_window_4": (
        "Qwen2MoeConfig",
        dict(
            use_sliding_window=True,
            sliding_window=4,
            max_window_layers=1,
            num_experts=2,
            num_experts_per_tok=1,
            moe_intermediate_size=16,
            shared_expert_intermediate_size=16,
            experts_implementation="eager",
        ),
    ),  # grouped_mm has no float64
    # Gemma-3 configs carry attn_logit_softcapping, but transformers' Gemma-3 attention never applies it (eager too)
    "gemma3_alternating_window_4": (
        "Gemma3TextConfig",
        dict(sliding_window=4, layer_types=ALTERNATING, query_pre_attn_scalar=16, attn_logit_softcapping=50.0),
    ),
    # soft-capping has no sdpa form: transformers runs Gemma-2 eager only, and packing is refused
    "gemma2_softcapping_window_4": (
        "Gemma2Config",
        dict(
            sliding_window=4,
            layer_types=ALTERNATING,
            query_pre_attn_scalar=16,
            attn_logit_softcapping=50.0,
            attn_implementation="eager",
        ),
    ),
}
SEQUENCE_LENGTHS = [7, 31, 19, 5, 12, 9]


def family_model(family: str, vocab_size: int = 64) -> PreferenceModel:
    import transformers

    config_class, extra = FAMILIES[family]
    config = getattr(transformers, config_class)(**{**SMALL, **extra, "vocab_size": vocab_size})
    torch.manual_seed(0)
    backbone = transformers.AutoModel.from_config(config)
    head = HeadConfig(kind="gpm", dim=8, gate=True)
    return PreferenceModel(backbone, head, init_std=0.3).eval()


def one_at_a_time_float64(model: PreferenceModel, seqs: list[torch.Tensor], prompt_ends: list[int]):
    """Each sequence alone (no padding, no packing) through a float64 copy with transformers' eager attention."""
    reference = copy.deepcopy(model).double()
    reference.backbone.set_attn_implementation("eager")
    with torch.no_grad():
        outs = [reference(s[None], torch.ones(1, len(s), dtype=torch.long), torch.tensor([p])) for s, p in zip(seqs, prompt_ends)]
    return torch.cat([o.value for o in outs]), torch.cat([o.gate for o in outs])


@pytest.mark.parametrize("family", list(FAMILIES))
def test_packed_sequences_keep_each_layers_sliding_window_scaling_and_eval_dropout(family, capsys):
    model = family_model(family)
    rng = torch.Generator().manual_seed(1)
    seqs = [torch.randint(3, 64, (n,), generator=rng) for n in SEQUENCE_LENGTHS]
    prompt_ends = [n // 2 for n in SEQUENCE_LENGTHS]  # past the window, so the gate sees it too
    ref_value, ref_gate = one_at_a_time_float64(model, seqs, prompt_ends)
    width = max(SEQUENCE_LENGTHS)
    pads = [width - len(s) for s in seqs]
    padded_ids = torch.stack([torch.cat([torch.zeros(pad, dtype=torch.long), s]) for pad, s in zip(pads, seqs)])
    mask = torch.stack([torch.arange(width) >= pad for pad in pads]).long()  # left padding
    with torch.no_grad():
        padded = model(padded_ids, mask, torch.tensor([pad + p for pad, p in zip(pads, prompt_ends)]))
    torch.testing.assert_close(padded.value, ref_value, atol=ATOL, rtol=0)
    torch.testing.assert_close(padded.gate, ref_gate, atol=ATOL, rtol=0)
    assert ref_value.std() > 1e-3  # the comparison is not between constants
    if "gemma2" in family:
        assert not model.enable_packing()
        assert "packing off: Gemma2Model runs 'eager' attention" in capsys.readouterr().err
        return
    assert model.enable_packing()
    bounds = [0, *np.cumsum(SEQUENCE_LENGTHS).tolist()]
    with torch.no_grad():
        packed = model(
            torch.cat(seqs)[None],
            prompt_end=torch.tensor(bounds[:-1]) + torch.tensor(prompt_ends),
            row=PackedRow.of_lengths(SEQUENCE_LENGTHS),
        )
    torch.testing.assert_close(packed.value, ref_value, atol=ATOL, rtol=0)
    torch.testing.assert_close(packed.gate, ref_gate, atol=ATOL, rtol=0)


def test_a_batch_without_attention_mask_keeps_the_sliding_window_once_packing_is_enabled():
    """Such a batch (no padding, no packed row) gets exactly transformers' sdpa mask, window included."""
    model = family_model("mistral_window_4")
    ids = torch.randint(3, 64, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model.backbone(input_ids=ids).last_hidden_state
        assert model.enable_packing()
        after = model.backbone(input_ids=ids).last_hidden_state
    assert torch.equal(before, after)


def test_length_grouped_batches_are_deterministic_cover_the_data_and_cut_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(32, 900, 400).tolist()
    a = epoch_batches(400, 8, seed=1, epoch=2, lengths=lengths)
    assert a == epoch_batches(400, 8, seed=1, epoch=2, lengths=lengths)  # exact resume sees the same batches
    assert a != epoch_batches(400, 8, seed=1, epoch=3, lengths=lengths)
    assert sorted(i for batch in a for i in batch) == list(range(400))
    assert len(a) == len(epoch_batches(400, 8, seed=1, epoch=2))
    waste = lambda batches: sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in batches)  # noqa: E731
    assert waste(a) < 0.5 * waste(epoch_batches(400, 8, seed=1, epoch=2))
    ranks = [epoch_batches(100, 4, seed=1, epoch=0, rank=r, world=2, lengths=lengths[:100]) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) and all(len(x) == len(y) for x, y in zip(*ranks))  # lockstep under DDP
    assert not {i for batch in ranks[0] for i in batch} & {i for batch in ranks[1] for i in batch}
