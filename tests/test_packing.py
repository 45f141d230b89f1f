"""Padding-free packing and length-grouped batches: same embeddings and gradients as padding, no attention
across sequences, deterministic batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpmctl.config import ModelConfig, TinyBackbone
from gpmctl.data.tokenize import EncodedPair, EncodedSequence, collate_pairs, real_tokens
from gpmctl.models.loading import build_model, load_tokenizer
from gpmctl.train.reward import epoch_batches, pair_loss

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
    out = model(batch["input_ids"], batch.get("attention_mask"), batch["prompt_end"], batch.get("cu_seqlens"))
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

    from gpmctl.models.reward_model import HeadConfig, PreferenceModel

    bert = AutoModel.from_config(BertConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                            num_attention_heads=2), attn_implementation="sdpa")  # fmt: skip
    assert not PreferenceModel(bert, HeadConfig(pool="first")).enable_packing()


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
