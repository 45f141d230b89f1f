"""The gate reads the prompt, and only the prompt: one gate per prompt, s(a > b) = -s(b > a).

The reference (gpm_paper.md section 1.3) reads the gate at

    response_len = len(tok(conversation)) - len(tok(prompt))      prompt_end = L - response_len - 1

where the prompt is the templated first turn, or without a chat template the first message's content
alone. Everything below recomputes that by hand: the tokenizer called directly on the texts the
authors build, the backbone run on one unpadded sequence at a time, the heads and the score in float64.
"""

from __future__ import annotations

import copy

import pytest
import torch

from gpmctl.config import TinyBackbone
from gpmctl.data.records import PreferenceRecord
from gpmctl.data.tokenize import SequenceEncoder, collate_pairs
from gpmctl.errors import ModelError
from gpmctl.models.build import tiny_backbone
from gpmctl.models.heads import HeadConfig
from gpmctl.models.model import PreferenceModel
from gpmctl.models.tiny_tokenizer import load_tiny_tokenizer
from gpmctl.train.reward import pair_loss

PROMPT = "Which fruit is the best one to eat on a cold winter morning, and why would you say so?"
FOLLOW_UP = "And in summer?"
SHORT, LONG = "An apple.", "A ripe orange, because it is sweet, full of juice and easy to peel when it is cold outside."


def tokenizer(template: bool):
    tok = load_tiny_tokenizer()
    if not template:
        tok = copy.deepcopy(tok)
        tok.chat_template = None
    return tok


def gated_model(tok, seed: int = 0) -> PreferenceModel:
    shape = TinyBackbone(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64)
    backbone = tiny_backbone(tok, shape, seed)
    torch.manual_seed(seed)
    # A large init so that the gate is far from uniform and a wrong read position shows in the numbers.
    return PreferenceModel(backbone, HeadConfig(kind="gpm", dim=6, gate=True, l2=True), init_std=0.5).eval()


def conversation(prompt: list[dict], response: str) -> list[dict]:
    return prompt + [{"role": "assistant", "content": response}]


def reference_texts(tok, prompt: list[dict], response: str) -> tuple[str, str]:
    """(conversation text, prompt text) as the authors build them."""
    conv = conversation(prompt, response)
    if tok.chat_template:
        return tok.apply_chat_template(conv, tokenize=False), tok.apply_chat_template(prompt[:1], tokenize=False)
    return " ".join(m["content"] for m in conv) + " " + tok.eos_token, prompt[0]["content"]


def reference_sequence(tok, prompt, response, max_length: int, side: str) -> tuple[list[int], int]:
    """Token ids and prompt_end by the official formula (right truncation: both texts cut at max_length).
    Left truncation, gpmctl's rule: drop tokens from the start, but not past the last token before the
    response; prompt_end moves left with the cut, to the first kept token if the cut passes it."""
    conv_text, prompt_text = reference_texts(tok, prompt, response)
    full = tok(conv_text)["input_ids"]
    prompt_ids = tok(prompt_text)["input_ids"]
    if side == "right" or len(full) <= max_length:
        ids = full[:max_length]
        response_len = len(ids) - len(prompt_ids[:max_length])
        ids = ids[:-1] + [tok.eos_token_id]
        return ids, len(ids) - response_len - 1
    context_text = (
        tok.apply_chat_template(prompt, tokenize=False) if tok.chat_template else " ".join(m["content"] for m in prompt)
    )
    context_len = len(tok(context_text)["input_ids"])
    cut = min(len(full) - max_length, context_len - 1)
    ids = full[cut : cut + max_length]
    ids = ids[:-1] + [tok.eos_token_id]
    return ids, max(len(prompt_ids) - 1 - cut, 0)


def reference_outputs(model: PreferenceModel, ids: list[int], prompt_end: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Embedding [2k] and gate [k] in float64 from one unpadded forward."""
    with torch.no_grad():
        hidden = model.backbone(input_ids=torch.tensor([ids])).last_hidden_state[0].double()
    value = hidden[-1] @ model.value_head.weight.detach().double().T
    value = value / value.norm()
    gate = torch.softmax(hidden[prompt_end] @ model.prompt_head.weight.detach().double().T, dim=-1)
    return value, gate


def reference_score(a: torch.Tensor, b: torch.Tensor, gate: torch.Tensor) -> float:
    return float(sum(gate[blk] * (a[2 * blk] * b[2 * blk + 1] - a[2 * blk + 1] * b[2 * blk]) for blk in range(len(gate))))


def system_score(model, encoder, prompt, chosen: str, rejected: str) -> float:
    """s(chosen > rejected) as training and evaluation compute it: one padded batch, `pair_loss`."""
    record = PreferenceRecord(
        prompt=prompt, chosen=[{"role": "assistant", "content": chosen}], rejected=[{"role": "assistant", "content": rejected}]
    )
    batch = collate_pairs([encoder.encode_pair(record)], model.backbone.config.pad_token_id)
    with torch.no_grad():
        return float(pair_loss(model, batch, model.head.tau, use_margin=False)[1][0])


PROMPTS = {
    "one turn": [{"role": "user", "content": PROMPT}],
    "multi turn": [
        {"role": "user", "content": PROMPT},
        {"role": "assistant", "content": "A pear."},
        {"role": "user", "content": FOLLOW_UP},
    ],
}


@pytest.mark.parametrize("template", [True, False], ids=["template", "no-template"])
@pytest.mark.parametrize("prompt_name", list(PROMPTS))
@pytest.mark.parametrize("max_length,side", [(512, "right"), (46, "right"), (12, "right"), (60, "left"), (20, "left")])
def test_prompt_end_follows_the_official_formula_and_both_responses_get_one_gate(template, prompt_name, max_length, side):
    tok = tokenizer(template)
    prompt = PROMPTS[prompt_name]
    model = gated_model(tok)
    encoder = SequenceEncoder(tok, max_length, truncation=side)
    refs, kept = {}, []
    for response in (SHORT, LONG):
        ids, prompt_end = reference_sequence(tok, prompt, response, max_length, side)
        kept.append(ids)
        seq = encoder.encode(prompt, [{"role": "assistant", "content": response}])
        assert seq.ids.tolist() == ids
        assert seq.prompt_end == prompt_end
        refs[response] = reference_outputs(model, ids, prompt_end)
    (va, ga), (vb, gb) = refs[SHORT], refs[LONG]
    if side == "right":  # a causal backbone reads the same prompt tokens in both passes
        assert torch.allclose(ga, gb, atol=1e-9), (ga, gb)
    gate = (ga + gb) / 2
    s_ab, s_ba = system_score(model, encoder, prompt, SHORT, LONG), system_score(model, encoder, prompt, LONG, SHORT)
    assert s_ab == pytest.approx(reference_score(va, vb, gate), abs=2e-5)
    assert s_ab == pytest.approx(-s_ba, abs=1e-6)
    if kept[0] != kept[1]:  # (a prompt longer than max_length leaves two identical sequences, s = 0)
        assert abs(s_ab) > 1e-3  # the checks above are not 0 == 0


def test_left_truncation_keeps_the_prompts_last_token_when_the_response_alone_does_not_fit():
    tok = tokenizer(template=False)
    prompt = PROMPTS["one turn"]
    encoder = SequenceEncoder(tok, 8, truncation="left")
    conv_text, prompt_text = reference_texts(tok, prompt, LONG)
    full, prompt_ids = tok(conv_text)["input_ids"], tok(prompt_text)["input_ids"]
    seq = encoder.encode(prompt, [{"role": "assistant", "content": LONG}])
    assert seq.prompt_end == 0
    start = len(prompt_ids) - 1
    assert seq.ids.tolist() == full[start : start + 7] + [tok.eos_token_id]
    assert encoder.truncated == 1


def test_pairs_with_differently_cut_prompts_are_still_antisymmetric():
    # Left truncation cuts the prompt of the longer response more: the two passes read different gates,
    # and one gate per prompt (their mean) keeps s(a > b) = -s(b > a).
    tok = tokenizer(template=True)
    model = gated_model(tok, seed=1)
    encoder = SequenceEncoder(tok, 40, truncation="left")
    prompt = PROMPTS["one turn"]
    seqs = [encoder.encode(prompt, [{"role": "assistant", "content": r}]) for r in (SHORT, LONG)]
    ga, gb = (reference_outputs(model, s.ids.tolist(), s.prompt_end)[1] for s in seqs)
    assert (ga - gb).abs().max() > 1e-4  # the situation this test is about
    s_ab, s_ba = system_score(model, encoder, prompt, SHORT, LONG), system_score(model, encoder, prompt, LONG, SHORT)
    assert s_ab == pytest.approx(-s_ba, abs=1e-6)
    assert abs(s_ab) > 1e-3


def test_a_gate_on_a_bidirectional_encoder_is_refused():
    from transformers import BertConfig, BertModel

    encoder = BertModel(
        BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    )
    with pytest.raises(ModelError, match="causal decoder"):
        PreferenceModel(encoder, HeadConfig(kind="gpm", dim=4, gate=True))
    PreferenceModel(encoder, HeadConfig(kind="gpm", dim=4, gate=False))  # without a gate an encoder is fine
