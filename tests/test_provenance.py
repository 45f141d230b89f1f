"""Result files a reviewer can trust: their provenance (hashes recomputed here with hashlib, independently), the
truncation report, and scores that do not depend on batch size or packing (tolerance 1e-5 on s, float32 models)."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from typer.testing import CliRunner

from gpmctl.cli import app
from gpmctl.models.sources import load_tokenizer


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from gpmctl.config import ModelConfig, TinyBackbone
    from gpmctl.models.build import build_model
    from gpmctl.models.io import save_model

    root = tmp_path_factory.mktemp("provenance")
    tok = load_tokenizer("tiny")
    cfg = ModelConfig(
        kind="gpm", dim=4, gate=True, tiny=TinyBackbone(hidden_size=32, num_layers=1, intermediate_size=64, initializer_range=0.3)
    )
    save_model(build_model(cfg, tok, seed=0), root / "model", tok)
    rows = [
        {"prompt": f"Pick one for garden {i}", "chosen": "jade, calm and soft " * (1 + i % 4), "rejected": "amber " * (1 + i % 3)}
        for i in range(20)
    ]
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def eval_pairs(root, *options):
    result = CliRunner().invoke(app, ["eval", "pairs", "-m", str(root / "model"), "--data", str(root / "pairs.jsonl"), *options])
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_result_file_names_the_exact_model_data_template_and_token_rules(setup, tmp_path):
    eval_pairs(setup, "-o", str(tmp_path / "r.json"))
    settings = json.loads((tmp_path / "r.json").read_text())["gpmctl"]
    p = settings["provenance"]
    folder = setup / "model"
    names = sorted(f.name for f in folder.iterdir() if f.name != "README.md")
    want = hashlib.sha256("".join(f"{n}\0{sha256(folder / n)}\n" for n in names).encode()).hexdigest()
    assert p["model"]["files"] == names and p["model"]["sha256"] == want
    assert p["data_files"] == [
        {
            "path": str(setup / "pairs.jsonl"),
            "bytes": (setup / "pairs.jsonl").stat().st_size,
            "sha256": sha256(setup / "pairs.jsonl"),
        }
    ]
    assert p["chat_template_sha256"] == hashlib.sha256(load_tokenizer("tiny").chat_template.encode()).hexdigest()
    assert p["versions"]["torch"] and p["gpmctl_version"] and p["wall_s"] >= 0 and p["processes"] == 1
    assert (settings["eos"], settings["truncation"], settings["max_length"], settings["pad_token_id"]) == (
        "overwrite",
        "right",
        2048,
        0,
    )
    assert (settings["sequences"], settings["truncated_sequences"]) == (40, 0)
    assert (settings["dtype"], settings["device"], settings["batch_size"]) == ("float32", "cpu", 32)


def test_cut_sequences_are_counted_and_over_one_percent_is_a_warning(setup, tmp_path):
    from gpmctl.data.tokenize import SequenceEncoder

    result = eval_pairs(setup, "-o", str(tmp_path / "r.json"), "--max-length", "20")
    settings = json.loads((tmp_path / "r.json").read_text())["gpmctl"]
    encoder = SequenceEncoder(load_tokenizer("tiny"), 10**6)  # the reference count: full lengths, nothing cut
    rows = [json.loads(line) for line in (setup / "pairs.jsonl").read_text().splitlines()]
    lengths = [
        len(encoder.encode([{"role": "user", "content": r["prompt"]}], [{"role": "assistant", "content": r[side]}]).ids)
        for r in rows
        for side in ("chosen", "rejected")
    ]
    cut = sum(n > 20 for n in lengths)
    assert 0 < cut < 40 and settings["truncated_sequences"] == cut and settings["sequences"] == 40
    pairs_cut = sum(a > 20 or b > 20 for a, b in zip(lengths[0::2], lengths[1::2]))  # examples with a sequence cut
    assert settings["truncated_examples"] == {
        "examples": 20,
        "examples_cut": pairs_cut,
        "share_cut": pairs_cut / 20,
        "by_subset": {"all": {"examples": 20, "cut": pairs_cut}},
    }
    assert f"warning: {cut} of 40 sequences ({100 * cut / 40:.1f}%) were longer than max_length 20" in result.stderr


def test_scores_do_not_depend_on_batch_size_or_packing(setup, tmp_path):
    scores = {}
    for batch, share in (("1", "false"), ("7", "false"), ("64", "false"), ("5", "true"), ("64", "true")):
        examples = tmp_path / f"e{batch}{share}.jsonl"
        eval_pairs(setup, "--batch-size", batch, "--share-prompt", share, "--examples", str(examples))
        scores[batch, share] = [json.loads(line)["score"] for line in examples.read_text().splitlines()]
    first = scores["1", "false"]
    assert max(abs(s) for s in first) > 1e-3
    for key, values in scores.items():
        assert values == pytest.approx(first, abs=1e-5), key


@pytest.mark.parametrize("share", ["true", "false"])
def test_a_cached_scorer_embeds_each_distinct_sequence_once_with_the_same_values(setup, share):
    from gpmctl.models.embed import load_scorer

    scorer = load_scorer(str(setup / "model"), batch_size=8, max_length=512, share_prompt=share)
    prompts = [[{"role": "user", "content": f"Pick one {i}"}] for i in range(3)]
    responses = [[[{"role": "assistant", "content": a}] for a in ("jade", "amber", "silver and gold")] for _ in prompts]
    plain = scorer.embed(prompts, responses)
    scorer.cache = {}
    computed = []
    forward = scorer.model.forward
    scorer.model.forward = lambda *a, **k: computed.append(1) or forward(*a, **k)
    first = scorer.embed(prompts, responses)
    calls = len(computed)
    again = scorer.embed(prompts[:2], [r[::-1] for r in responses[:2]])  # the same sequences, another order
    assert calls >= 1 and len(computed) == calls and len(scorer.cache) == 9
    for got, want in ((first, plain), (again, (plain[0][:2].flip(1), plain[1][:2]))):
        assert torch.allclose(got[0], want[0], atol=1e-6) and torch.allclose(got[1], want[1], atol=1e-6)


@pytest.fixture
def restore_determinism():
    """The mode is process-wide (a command's process ends with it): give the other tests their defaults back."""
    state = (torch.are_deterministic_algorithms_enabled(), torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    yield
    torch.use_deterministic_algorithms(state[0])
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = state[1], state[2]


def test_deterministic_mode_reruns_bit_for_bit_and_says_so(setup, tmp_path, restore_determinism):
    """On this CPU the kernels are deterministic anyway: the mode must change no number beyond the fp32 heads
    (the model is fp32 already) and must say so in the results; on a GPU it also fixes the kernels (not tested here)."""
    runs = []
    for n in range(2):
        eval_pairs(setup, "--deterministic", "-o", str(tmp_path / f"d{n}.json"), "--examples", str(tmp_path / f"d{n}.jsonl"))
        runs.append((tmp_path / f"d{n}.jsonl").read_bytes())
    assert runs[0] == runs[1]
    assert json.loads((tmp_path / "d0.json").read_text())["gpmctl"]["deterministic"] is True
    eval_pairs(setup, "--examples", str(tmp_path / "plain.jsonl"))
    assert (tmp_path / "plain.jsonl").read_bytes() == runs[0]
