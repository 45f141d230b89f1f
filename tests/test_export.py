"""Released-checkpoint layout and `gpmctl export`: the same numbers before and after, and vs float64."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from gpmctl.config import TinyBackbone
from gpmctl.data.tokenize import SequenceEncoder, pad_sequences
from gpmctl.errors import ModelError
from gpmctl.models.build import tiny_backbone
from gpmctl.models.export import export_model
from gpmctl.models.heads import HeadConfig
from gpmctl.models.io import load_model, read_head_config
from gpmctl.models.model import PreferenceModel
from gpmctl.models.sources import load_tokenizer

PROMPT = [{"role": "user", "content": "Which option suits a garden best?"}]
ANSWERS = ["Go with jade because it is calm.", "Pick silver.", "I would pick amber, since it feels warm and bold."]


def official_checkpoint(folder, dim=6, gate=True, seed=0):
    """A folder in the layout of the paper's released models: base weights under `model.`, the heads, no settings file."""
    tok = load_tokenizer("tiny")
    backbone = tiny_backbone(tok, TinyBackbone(hidden_size=32, intermediate_size=64, num_layers=2, initializer_range=0.2), seed)
    g = torch.Generator().manual_seed(seed)
    state = {f"model.{k}": v.contiguous() for k, v in backbone.state_dict().items()}
    state["value_head.weight"] = torch.randn(dim, 32, generator=g)
    if gate:
        state["prompt_head.weight"] = torch.randn(dim // 2, 32, generator=g)
    state["lm_head.weight"] = torch.randn(len(tok), 32, generator=g)  # released checkpoints keep the LM head
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    backbone.config.save_pretrained(folder)
    tok.save_pretrained(folder)
    return backbone, state


def reference_scores(backbone, state, encoder, prompt, answers):
    """The paper's recipe written out in float64: hidden state at the last token, v = normalize(W_v h),
    lambda = softmax(W_p h_prompt_end), s(i > j) = sum_l lambda_l (v_i[2l] v_j[2l+1] - v_i[2l+1] v_j[2l])."""
    seqs = [encoder.encode(prompt, [{"role": "assistant", "content": a}]) for a in answers]
    hidden, prompt_hidden = [], []
    for s in seqs:  # one sequence at a time: no padding at all
        batch = pad_sequences([s], encoder.tokenizer.pad_token_id)
        with torch.no_grad():
            h = backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state[0].double()
        hidden.append(h[-1])
        prompt_hidden.append(h[s.prompt_end])
    W_v, W_p = state["value_head.weight"].double(), state["prompt_head.weight"].double()
    v = [(W_v @ h) / (W_v @ h).norm() for h in hidden]
    logits = W_p @ prompt_hidden[0]
    lam = torch.exp(logits - logits.max()) / torch.exp(logits - logits.max()).sum()
    K, k = len(answers), W_v.shape[0] // 2
    S = torch.zeros(K, K, dtype=torch.float64)
    for i in range(K):
        for j in range(K):
            S[i, j] = sum(lam[blk] * (v[i][2 * blk] * v[j][2 * blk + 1] - v[i][2 * blk + 1] * v[j][2 * blk]) for blk in range(k))
    return S


def gpmctl_scores(model, encoder, prompt, answers):
    from gpmctl.models import preference as P
    from gpmctl.models.embed import embed_sequences

    seqs = [encoder.encode(prompt, [{"role": "assistant", "content": a}]) for a in answers]
    value, gate = embed_sequences(model, seqs, batch_size=2, pad_id=encoder.tokenizer.pad_token_id, device="cpu")
    return P.score_matrix(value.double(), gate[0].double())


def test_released_layout_is_inferred_and_scores_like_the_float64_reference(tmp_path):
    backbone, state = official_checkpoint(tmp_path / "official")
    head = read_head_config(tmp_path / "official")
    assert (head.kind, head.dim, head.gate, head.l2, head.tau) == ("gpm", 6, True, True, 0.1)
    model = load_model(tmp_path / "official", dtype="float32")
    encoder = SequenceEncoder(load_tokenizer(str(tmp_path / "official")), 128)
    got = gpmctl_scores(model, encoder, PROMPT, ANSWERS)
    want = reference_scores(backbone, state, encoder, PROMPT, ANSWERS)
    assert want.abs().max() > 1e-3  # a meaningful comparison, not zeros against zeros
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)  # float32 model vs float64 formula


def test_released_bt_layout_and_bad_folders(tmp_path):
    official_checkpoint(tmp_path / "bt", dim=1, gate=False)
    assert read_head_config(tmp_path / "bt").kind == "bt"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="safetensors"):
        read_head_config(tmp_path / "empty")
    official_checkpoint(tmp_path / "odd", dim=3, gate=False)
    with pytest.raises(ModelError, match="even"):
        read_head_config(tmp_path / "odd")


@pytest.mark.parametrize("dtype,tol", [(None, 0.0), ("bf16", 5e-2)])
def test_export_then_load_gives_the_same_scores(tmp_path, dtype, tol):
    official_checkpoint(tmp_path / "src")
    (tmp_path / "src" / "metrics.json").write_text(json.dumps({"steps": 7, "model_eval": {"accuracy": 0.75}}))
    out = export_model(tmp_path / "src", tmp_path / "exported", dtype=dtype, max_shard_size="100KB")
    assert (out / "model.safetensors.index.json").is_file()  # sharded
    config = json.loads((out / "config.json").read_text())
    assert config["preference_head"]["dim"] == 6 and config["preference_head"]["gate"] is True
    card = (out / "README.md").read_text()
    assert "General Preference Model" in card and "| accuracy | 0.7500 |" in card
    before, after = load_model(tmp_path / "src", dtype="float32"), load_model(out, dtype="float32")
    encoder = SequenceEncoder(load_tokenizer(str(out)), 128)
    torch.testing.assert_close(
        gpmctl_scores(after, encoder, PROMPT, ANSWERS), gpmctl_scores(before, encoder, PROMPT, ANSWERS), rtol=0, atol=tol
    )


def test_export_cli_writes_a_loadable_folder(tmp_path):
    from typer.testing import CliRunner

    from gpmctl.cli import app

    tok = load_tokenizer("tiny")
    model = PreferenceModel(
        tiny_backbone(tok, TinyBackbone(hidden_size=32, intermediate_size=64, num_layers=1)),
        HeadConfig(kind="bt", dim=1, tau=1.0),
    )
    from gpmctl.models.io import save_model

    save_model(model, tmp_path / "run", tok)
    result = CliRunner().invoke(app, ["export", str(tmp_path / "run"), str(tmp_path / "out"), "--dtype", "fp16"])
    assert result.exit_code == 0, result.output
    assert "model.safetensors" in json.loads(result.stdout.strip().splitlines()[-1])["files"]
    assert load_model(tmp_path / "out").value_head.weight.dtype == torch.float32  # loaded as asked, stored fp16


def test_bt_export_as_a_sequence_classifier_gives_gpmctl_rewards_in_plain_transformers(tmp_path):
    from transformers import AutoModelForSequenceClassification

    from gpmctl.models.io import save_model

    tok = load_tokenizer("tiny")
    backbone = tiny_backbone(tok, TinyBackbone(hidden_size=32, intermediate_size=64, num_layers=2, initializer_range=0.2))
    model = PreferenceModel(backbone, HeadConfig(kind="bt", dim=1, tau=1.0, l2=False), init_std=0.5).eval()
    save_model(model, tmp_path / "bt", tok)
    export_model(tmp_path / "bt", tmp_path / "seqcls", as_sequence_classifier=True)
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "seqcls").eval()
    encoder = SequenceEncoder(tok, 128)
    for answer in ANSWERS:
        seq = encoder.encode(PROMPT, [{"role": "assistant", "content": answer}])
        batch = pad_sequences([seq], tok.pad_token_id)
        with torch.no_grad():
            want = model(batch["input_ids"], batch["attention_mask"]).value[0]
            got = plain(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[0, 0]
        assert abs(want.item()) > 1e-3 and got.item() == pytest.approx(want.item(), abs=1e-5)
    with pytest.raises(Exception, match="needs a BT model"):
        official_checkpoint(tmp_path / "gpm")
        export_model(tmp_path / "gpm", tmp_path / "x", as_sequence_classifier=True)
