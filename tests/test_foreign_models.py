"""Reward models saved by other tools, read as those tools read them, and gpmctl BT exports read by plain transformers.

Each reference is written directly against transformers (or against OpenRLHF's documented rule), in float64, one
sequence at a time: never through gpmctl's tokenisation, collation or model classes.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from gpmctl.cli import app
from gpmctl.config import ModelConfig
from gpmctl.errors import ModelError
from gpmctl.models.heads import HeadConfig
from gpmctl.models.io import load_model
from gpmctl.models.sources import load_tokenizer

PROMPTS = ["Which option suits a garden best?", "Name a calm colour.", "What should I read tonight?"]
ANSWERS = [
    ["Go with jade because it is calm.", "Pick silver.", "I would pick amber, since it feels warm and bold."],
    ["Blue.", "Jade, soft and quiet.", "Red is loud."],
    ["A short novel.", "Anything you like.", "The report on page 4, twice."],
]


def tiny_config(tok, **kwargs):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        initializer_range=0.2,
        rope_theta=50000.0,
        **kwargs,
    )


def classifier_folder(path, pad_token_id=None, seed=0):
    """A LlamaForSequenceClassification (num_labels 1) saved by plain transformers, with the tiny tokenizer."""
    from transformers import LlamaForSequenceClassification

    tok = load_tokenizer("tiny")
    pad = tok.pad_token_id if pad_token_id is None else pad_token_id
    torch.manual_seed(seed)
    model = LlamaForSequenceClassification(tiny_config(tok, num_labels=1, pad_token_id=pad)).eval()
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return model, tok


def conversation(prompt: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


def transformers_reward(model, tok, prompt: str, answer: str) -> float:
    """What TRL's RewardTrainer and transformers compute: the chat template's tokens, one unpadded sequence, the
    classifier's logit (read by transformers at the last token that is not its config's pad token), float64."""
    ids = tok.apply_chat_template(conversation(prompt, answer), tokenize=True, return_dict=True, return_tensors="pt")
    with torch.no_grad():
        return model.double()(input_ids=ids["input_ids"]).logits[0, 0].item()


def responses_file(path, prompt_answers):
    path.write_text("".join(json.dumps({"prompt": p, "response": a}) + "\n" for p, a in prompt_answers))
    return str(path)


def score_lines(model: str, files: list[str], *options: str) -> list[dict]:
    result = CliRunner().invoke(app, ["score", *files, "--model", model, "--batch-size", "4", *options])
    assert result.exit_code == 0, (result.output, result.exception)
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.mark.parametrize("share_prompt", ["true", "false"])
def test_a_transformers_sequence_classifier_scores_as_transformers_computes_it(tmp_path, share_prompt):
    model, tok = classifier_folder(tmp_path / "rm")
    a = responses_file(tmp_path / "a.jsonl", [(p, answers[0]) for p, answers in zip(PROMPTS, ANSWERS)])
    b = responses_file(tmp_path / "b.jsonl", [(p, answers[1]) for p, answers in zip(PROMPTS, ANSWERS)])
    lines = score_lines(str(tmp_path / "rm"), [a, b], "--share-prompt", share_prompt)
    for line, prompt, answers in zip(lines, PROMPTS, ANSWERS):
        want_a, want_b = (transformers_reward(model, tok, prompt, answer) for answer in answers[:2])
        assert abs(want_a - want_b) > 1e-2  # the check below can fail
        assert line["reward_a"] == pytest.approx(want_a, abs=1e-4) and line["reward_b"] == pytest.approx(want_b, abs=1e-4)
        assert line["p"] == pytest.approx(1 / (1 + torch.exp(torch.tensor(want_b - want_a)).item()), abs=1e-4)
    head = load_model(tmp_path / "rm").head
    assert (head.kind, head.eos, head.tau) == ("bt", "template", 1.0)


def test_the_reward_is_read_at_the_last_token_that_is_not_the_configs_pad(tmp_path):
    """transformers skips trailing pad tokens: with a pad id that ends every templated conversation (here the
    newline after <|im_end|>), it reads <|im_end|>, and so must gpmctl."""
    tok = load_tokenizer("tiny")
    newline = tok.apply_chat_template(conversation("q", "a"), tokenize=True)["input_ids"][-1]
    model, tok = classifier_folder(tmp_path / "rm", pad_token_id=newline)
    a = responses_file(tmp_path / "a.jsonl", [(PROMPTS[0], ANSWERS[0][0])])
    b = responses_file(tmp_path / "b.jsonl", [(PROMPTS[0], ANSWERS[0][2])])
    line = score_lines(str(tmp_path / "rm"), [a, b])[0]
    assert line["reward_a"] == pytest.approx(transformers_reward(model, tok, PROMPTS[0], ANSWERS[0][0]), abs=1e-4)
    assert line["reward_b"] == pytest.approx(transformers_reward(model, tok, PROMPTS[0], ANSWERS[0][2]), abs=1e-4)


def test_eval_pairs_rewardbench_and_rmbench_score_a_classifier_with_its_own_rewards(tmp_path):
    model, tok = classifier_folder(tmp_path / "rm")
    rows = [
        {"prompt": p, "chosen": answers[0], "rejected": answers[2], "id": i, "subset": subset}
        for i, (p, answers, subset) in enumerate(zip(PROMPTS, ANSWERS, ["alpacaeval-easy", "mt-bench-easy", "hep-js"]))
    ]
    want = [
        transformers_reward(model, tok, r["prompt"], r["chosen"]) - transformers_reward(model, tok, r["prompt"], r["rejected"])
        for r in rows
    ]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    runner = CliRunner()
    for command in ("pairs", "rewardbench"):
        examples = tmp_path / f"{command}_examples.jsonl"
        args = ["eval", command, "-m", str(tmp_path / "rm"), "--data", str(tmp_path / "pairs.jsonl"), "--examples", str(examples)]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (result.output, result.exception)
        got = [json.loads(line)["score"] for line in examples.read_text().splitlines()]
        assert got == pytest.approx(want, abs=1e-4), command
    rm_dir = tmp_path / "rmbench"
    rm_dir.mkdir()
    rm_row = {"id": 0, "domain": "chat", "prompt": PROMPTS[1], "chosen": ANSWERS[1][:3], "rejected": ANSWERS[2][:3]}
    (rm_dir / "total_dataset.json").write_text(json.dumps([rm_row]))
    result = runner.invoke(
        app, ["eval", "rmbench", "-m", str(tmp_path / "rm"), "--data", str(rm_dir), "--examples", str(tmp_path / "rm.jsonl")]
    )
    assert result.exit_code == 0, (result.output, result.exception)
    scores = json.loads((tmp_path / "rm.jsonl").read_text())["scores"]
    chosen = [transformers_reward(model, tok, PROMPTS[1], t) for t in rm_row["chosen"]]
    rejected = [transformers_reward(model, tok, PROMPTS[1], t) for t in rm_row["rejected"]]
    assert sum(scores, []) == pytest.approx([c - r for c in chosen for r in rejected], abs=1e-4)


def openrlhf_folder(path, mean=0.5, std=2.0, prefix="value_head"):
    """A reward model in OpenRLHF's saved layout: the base model's weights under `model.`, a bias-free
    `<prefix>.weight` [1, H], and normalize_reward / mean / std in config.json."""
    from transformers import LlamaModel

    tok = load_tokenizer("tiny")
    torch.manual_seed(1)
    base = LlamaModel(tiny_config(tok, pad_token_id=tok.pad_token_id)).eval()
    head = torch.randn(1, 32, generator=torch.Generator().manual_seed(2))
    path.mkdir()
    save_file(
        {**{f"model.{k}": v.contiguous() for k, v in base.state_dict().items()}, f"{prefix}.weight": head},
        path / "model.safetensors",
    )
    base.config.save_pretrained(path)
    config = json.loads((path / "config.json").read_text())
    config.update(normalize_reward=True, mean=mean, std=std, value_head_prefix=prefix, architectures=["RewardModel"])
    (path / "config.json").write_text(json.dumps(config))
    tok.save_pretrained(path)
    return base, head, tok


def openrlhf_reward(base, head, tok, prompt: str, answer: str, mean: float, std: float) -> float:
    """OpenRLHF's RewardDataset + RewardModel, written out: the templated text without trailing newlines, " " + EOS,
    tokens without added special tokens, the last one set to EOS, the head at the last token, then (r - mean) / std."""
    text = tok.apply_chat_template(conversation(prompt, answer), tokenize=False).rstrip("\n")
    if not text.endswith(tok.eos_token):
        text += " " + tok.eos_token
    ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    ids[0, -1] = tok.eos_token_id
    with torch.no_grad():
        hidden = base.double()(input_ids=ids).last_hidden_state[0, -1]
    return ((hidden @ head[0].double()).item() - mean) / std


@pytest.mark.parametrize("prefix", ["value_head", "score"])
def test_an_openrlhf_reward_model_scores_with_its_text_rule_and_normalisation(tmp_path, prefix):
    base, head, tok = openrlhf_folder(tmp_path / "rm", prefix=prefix)
    a = responses_file(tmp_path / "a.jsonl", [(p, answers[0]) for p, answers in zip(PROMPTS, ANSWERS)])
    b = responses_file(tmp_path / "b.jsonl", [(p, answers[2]) for p, answers in zip(PROMPTS, ANSWERS)])
    for line, prompt, answers in zip(score_lines(str(tmp_path / "rm"), [a, b]), PROMPTS, ANSWERS):
        assert line["reward_a"] == pytest.approx(openrlhf_reward(base, head, tok, prompt, answers[0], 0.5, 2.0), abs=1e-4)
        assert line["reward_b"] == pytest.approx(openrlhf_reward(base, head, tok, prompt, answers[2], 0.5, 2.0), abs=1e-4)
    assert load_model(tmp_path / "rm").head.eos == "openrlhf"
    raw = score_lines(str(tmp_path / "rm"), [a, b], "--no-normalize")[0]["reward_a"]
    assert raw == pytest.approx(openrlhf_reward(base, head, tok, PROMPTS[0], ANSWERS[0][0], 0.0, 1.0), abs=1e-4)


def test_classifiers_gpmctl_cannot_read_exactly_are_refused_in_one_line(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification, LlamaForSequenceClassification

    tok = load_tokenizer("tiny")
    LlamaForSequenceClassification(tiny_config(tok, num_labels=3)).save_pretrained(tmp_path / "three")
    with pytest.raises(ModelError, match="3 labels; a reward model has num_labels 1"):
        load_model(tmp_path / "three")
    bert = BertConfig(
        vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, num_labels=1
    )
    BertForSequenceClassification(bert).save_pretrained(tmp_path / "bert")
    with pytest.raises(ModelError, match="head is one bias-free linear `score`"):
        load_model(tmp_path / "bert")


def test_bt_recipes_default_to_the_fields_token_rule_and_gpm_keeps_the_papers():
    assert ModelConfig(kind="bt").resolved_eos() == "template" and ModelConfig(kind="gpm").resolved_eos() == "overwrite"
    assert HeadConfig.from_model_config(ModelConfig(kind="bt")).eos == "template"
    assert ModelConfig(kind="bt", eos="overwrite").resolved_eos() == "overwrite"


def gpmctl_bt_folder(path, eos="template"):
    from gpmctl.config import TinyBackbone
    from gpmctl.models.build import tiny_backbone
    from gpmctl.models.io import save_model
    from gpmctl.models.model import PreferenceModel

    tok = load_tokenizer("tiny")
    backbone = tiny_backbone(tok, TinyBackbone(hidden_size=32, intermediate_size=64, num_layers=2, initializer_range=0.2))
    model = PreferenceModel(backbone, HeadConfig(kind="bt", dim=1, tau=1.0, l2=False, eos=eos), init_std=0.5).eval()
    save_model(model, path, tok)
    return tok


def test_a_gpmctl_bt_export_scores_the_same_in_plain_transformers_and_in_gpmctl_eval(tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    from gpmctl.models.export import export_model

    gpmctl_bt_folder(tmp_path / "bt")
    export_model(tmp_path / "bt", tmp_path / "seqcls", as_sequence_classifier=True)
    rows = [{"prompt": p, "chosen": answers[0], "rejected": answers[1]} for p, answers in zip(PROMPTS, ANSWERS)]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    gpmctl_scores = {}
    for folder in ("bt", "seqcls"):
        examples = tmp_path / f"{folder}_examples.jsonl"
        args = [
            "eval",
            "pairs",
            "-m",
            str(tmp_path / folder),
            "--data",
            str(tmp_path / "pairs.jsonl"),
            "--examples",
            str(examples),
        ]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, (result.output, result.exception)
        gpmctl_scores[folder] = [json.loads(line)["score"] for line in examples.read_text().splitlines()]
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "seqcls").eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "seqcls")
    trl_style = [
        transformers_reward(plain, tok, r["prompt"], r["chosen"]) - transformers_reward(plain, tok, r["prompt"], r["rejected"])
        for r in rows
    ]
    classify = pipeline("text-classification", model=plain.float(), tokenizer=tok, function_to_apply="none")
    texts = [
        tok.apply_chat_template(conversation(r["prompt"], r[side]), tokenize=False)
        for r in rows
        for side in ("chosen", "rejected")
    ]
    rewards = [out["score"] for out in classify(texts)]
    piped = [rewards[2 * i] - rewards[2 * i + 1] for i in range(len(rows))]
    assert min(abs(s) for s in trl_style) > 1e-2
    assert gpmctl_scores["bt"] == pytest.approx(trl_style, abs=1e-4) and gpmctl_scores["seqcls"] == pytest.approx(
        trl_style, abs=1e-4
    )
    assert piped == pytest.approx(trl_style, abs=1e-4)


def test_an_export_under_the_papers_token_rule_says_how_plain_transformers_differs(tmp_path, capsys):
    from gpmctl.models.export import export_model

    gpmctl_bt_folder(tmp_path / "bt", eos="overwrite")
    export_model(tmp_path / "bt", tmp_path / "seqcls", as_sequence_classifier=True)
    assert "'overwrite' token rule" in capsys.readouterr().err
    assert "eos_token_id]` to reproduce" in (tmp_path / "seqcls" / "README.md").read_text()


def test_exports_carry_the_files_transformers_4_reads(tmp_path):
    """RewardBench pins transformers 4.51: it reads `rope_theta` (else silently its default 10000), a 4.x tokenizer
    class, `additional_special_tokens` and the chat template from tokenizer_config.json (checked by hand with 4.51.3:
    same token ids and rope_theta)."""
    from gpmctl.models.export import export_model

    gpmctl_bt_folder(tmp_path / "bt")
    export_model(tmp_path / "bt", tmp_path / "seqcls", as_sequence_classifier=True)
    for folder in ("bt", "seqcls"):
        config = json.loads((tmp_path / folder / "config.json").read_text())
        assert config["rope_theta"] == config["rope_parameters"]["rope_theta"]
        settings = json.loads((tmp_path / folder / "tokenizer_config.json").read_text())
        assert settings["tokenizer_class"] == "PreTrainedTokenizerFast" and "extra_special_tokens" not in settings
        assert settings["additional_special_tokens"] == ["<|im_start|>", "<|im_end|>"]
        assert settings["chat_template"] == (tmp_path / folder / "chat_template.jinja").read_text()
        special = json.loads((tmp_path / folder / "special_tokens_map.json").read_text())
        assert special["pad_token"] == "<|pad|>" and special["eos_token"] == "<|eos|>"
    assert json.loads((tmp_path / "seqcls" / "config.json").read_text())["pad_token_id"] == load_tokenizer("tiny").pad_token_id


def test_the_model_card_is_hub_metadata_with_the_runs_results_and_no_machine_paths(tmp_path):
    import yaml
    from huggingface_hub import ModelCard

    from gpmctl.models.export import export_model

    gpmctl_bt_folder(tmp_path / "bt")
    (tmp_path / "bt" / "recipe.yaml").write_text(
        yaml.safe_dump(
            {
                "model": {"kind": "bt", "backbone": "HuggingFaceTB/SmolLM2-135M-Instruct"},
                "data": {"train": str(tmp_path / "x.jsonl")},
            }
        )
    )
    metrics = {"steps": 3, "model_eval": {"accuracy": 0.625}, "benchmarks": {"rewardbench": {"score": 0.71}}}
    (tmp_path / "bt" / "metrics.json").write_text(json.dumps(metrics))
    export_model(tmp_path / "bt", tmp_path / "seqcls", as_sequence_classifier=True)
    text = (tmp_path / "seqcls" / "README.md").read_text()
    card = ModelCard(text)
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and card.data.pipeline_tag == "text-classification"
    assert card.data.library_name == "transformers" and "bradley-terry" in card.data.tags
    results = {(r.dataset_type, r.metric_value) for r in card.data.eval_results}
    assert results == {("local", 0.625), ("allenai/reward-bench", 0.71)}
    assert str(tmp_path) not in text and "x.jsonl" in text and "AutoModelForSequenceClassification.from_pretrained" in text


def test_a_hub_id_that_cannot_be_fetched_is_one_line_naming_it(tmp_path):
    a = responses_file(tmp_path / "a.jsonl", [(PROMPTS[0], ANSWERS[0][0])])
    result = CliRunner().invoke(app, ["score", a, a, "--model", "someone/some-reward-model"])
    assert isinstance(result.exception, ModelError)
    message = str(result.exception)
    assert message.startswith("someone/some-reward-model: not a local folder") and "HF_HUB_OFFLINE=1" in message
    assert "\n" not in message
