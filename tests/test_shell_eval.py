"""The hard shell of `gpmctl eval ...`, `gpmctl plot` and `gpmctl recipes`: every bad input below is exit
code 2, one stderr line naming the file (and line and field, or the option), no traceback, and every file
that existed before is left as it was (nothing new is written either)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from shell import assert_one_line_error, run, snapshot

ROOT = Path(__file__).resolve().parent.parent


def _lines(*rows) -> bytes:
    """jsonl bytes: dicts are dumped, str / bytes lines are taken as written (NaN, bad UTF-8, ...)."""
    out = b""
    for r in rows:
        out += (r if isinstance(r, bytes) else r.encode() if isinstance(r, str) else json.dumps(r).encode()) + b"\n"
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Untrained tiny GPM and BT folders (instant): the shell is under test, not the scores."""
    from gpmctl.config import ModelConfig, TinyBackbone
    from gpmctl.models.build import build_model
    from gpmctl.models.io import save_model
    from gpmctl.models.sources import load_tokenizer

    root, tok = tmp_path_factory.mktemp("models"), load_tokenizer("tiny")
    tiny = TinyBackbone(hidden_size=32, num_layers=1, intermediate_size=64)
    build = {kind: build_model(ModelConfig(kind=kind, dim=4, tiny=tiny), tok, seed=0) for kind in ("gpm", "bt")}
    return {kind: save_model(model, root / kind, tok) for kind, model in build.items()}


# ----------------------------------------------------------------------------------------------------
# --scores: one shared reader (gpmctl.eval.scoring) behind every evaluator

RB2_ROW = {"id": "Math-0", "subset": "Math", "num_correct": 1, "scores": [[0, 1], [-1, 0]]}
RM_ROW = {"domain": "chat", "scores": [[1, 1, 1], [1, 1, 1], [1, 1, 1]]}
JB_EXAMPLE = {"pair_id": "x", "source": "livecodebench", "label": "A>B", "score": 0.5, "score_reversed": -0.5}
RMB_EXAMPLE = {"set": "bon", "goal": "Helpfulness", "scenario": "Debugging", "scores": [0.5, -0.1]}
JB_ROW = {"pair_id": "x", "source": "livecodebench", "question": "q", "response_model": "m", "response_A": "a", "response_B": "b"}

SCORES_CASES = {
    # name: (evaluator, file name, content, needles after the file name)
    "pairs-nan-score": (
        "pairs",
        "s.jsonl",
        _lines({"score": 1, "p": 0.7}, '{"score": NaN, "p": 0.5}'),
        [":2:", "score", "finite"],
    ),
    "pairs-infinite-p": ("pairs", "s.jsonl", _lines('{"score": 1, "p": Infinity}'), [":1:", "p:", "finite"]),
    "pairs-p-above-1": ("pairs", "s.jsonl", _lines({"score": 1, "p": 1.5}), [":1:", "p:", "[0, 1]"]),
    "pairs-p-negative": ("pairs", "s.jsonl", _lines({"score": -1, "p": -0.2}), [":1:", "p:", "[0, 1]"]),
    "pairs-p-string": ("pairs", "s.jsonl", _lines({"score": 1, "p": "0.9"}), [":1:", "p:", "'0.9'"]),
    "pairs-p-bool": ("pairs", "s.jsonl", _lines({"score": 1, "p": True}), [":1:", "p:"]),
    "pairs-no-p": ("pairs", "s.jsonl", _lines({"subset": "a"}), [":1:", "p:", "missing"]),
    "pairs-label-above-1": ("pairs", "s.jsonl", _lines({"score": 1, "p": 0.9, "label": 2}), [":1:", "label:"]),
    "pairs-p-against-score": ("pairs", "s.jsonl", _lines({"score": -1.0, "p": 0.9}), [":1:", "p:", "other side"]),
    "pairs-empty-file": ("pairs", "s.jsonl", b"", ["no per-example rows"]),
    "pairs-blank-lines-only": ("pairs", "s.jsonl", b"\n\n", ["no per-example rows"]),
    "pairs-not-utf8": (
        "pairs",
        "s.jsonl",
        _lines({"score": 1, "p": 0.9}, b'{"score": 1, "p": 0.9, "subset": "\xe9"}'),
        [":2:", "UTF-8"],
    ),
    "pairs-not-an-object": ("pairs", "s.jsonl", _lines("[1, 2]"), [":1:", "JSON object"]),
    "pairs-bad-json": ("pairs", "s.jsonl", _lines({"score": 1, "p": 0.9}, '{"score": 1,'), [":2:", "invalid JSON"]),
    "pairs-no-such-file": ("pairs", None, None, ["no such file"]),
    "cyclic-nan-score": ("cyclic", "s.jsonl", _lines('{"score": NaN, "p": 0.5, "cycle": 0}'), [":1:", "score"]),
    "rb-no-subset": ("rewardbench", "s.jsonl", _lines({"score": 1.0}), [":1:", "subset:", "missing"]),
    "rb-subset-number": ("rewardbench", "s.jsonl", _lines({"subset": 3, "score": 1.0}), [":1:", "subset:", "string"]),
    "rb-unknown-subset": (
        "rewardbench",
        "s.jsonl",
        _lines({"subset": "hep-go", "score": 1}, {"subset": "hep-cobol", "score": 1}),
        [":2:", "subset:", "hep-cobol"],
    ),
    "rb-score-string": ("rewardbench", "s.jsonl", _lines({"subset": "hep-go", "score": "x"}), [":1:", "score:"]),
    "rb-score-nan": ("rewardbench", "s.jsonl", _lines('{"subset": "hep-go", "score": NaN}'), [":1:", "score:", "finite"]),
    "rb-two-chosen-scores": (
        "rewardbench",
        "s.jsonl",
        _lines({"subset": "hep-go", "score_chosen": [1, 2], "score_rejected": 0}),
        [":1:", "score_chosen:"],
    ),
    "rb-correct-2": ("rewardbench", "s.jsonl", _lines({"subset": "hep-go", "correct": 2}), [":1:", "correct:", "[0, 1]"]),
    "rb-no-score": ("rewardbench", "s.jsonl", _lines({"subset": "hep-go"}), [":1:", "score:", "missing"]),
    "rb-results-string": ("rewardbench", "r.json", json.dumps({"hep-go": "x", "model": "m"}).encode(), ["hep-go:", "'x'"]),
    "rb-results-nan": ("rewardbench", "r.json", b'{"hep-go": NaN}', ["hep-go:", "finite"]),
    "rb-results-above-1": ("rewardbench", "r.json", b'{"hep-go": 95.0}', ["hep-go:", "[0, 1]"]),
    "rb-results-no-subsets": ("rewardbench", "r.json", b'{"model": "m"}', ["per-subset"]),
    "rb-results-bad-json": ("rewardbench", "r.json", b'{"hep-go": ', [":1:", "invalid JSON"]),
    "rb-results-not-utf8": ("rewardbench", "r.json", b'{"model": "\xff"}', ["UTF-8"]),
    "rb-parallel-lists-nan": (
        "rewardbench",
        "r.json",
        b'{"subset": ["hep-go", "hep-go"], "scores_chosen": [1, NaN], "scores_rejected": [0, 0]}',
        [":2:", "scores_chosen:"],
    ),
    "rb2-no-scores": (
        "rewardbench2",
        "s.jsonl",
        _lines({k: v for k, v in RB2_ROW.items() if k != "scores"}),
        [":1:", "scores:", "missing"],
    ),
    "rb2-ragged-scores": ("rewardbench2", "s.jsonl", _lines({**RB2_ROW, "scores": [[0, 1], [1]]}), [":1:", "scores:", "K x K"]),
    "rb2-scores-number": ("rewardbench2", "s.jsonl", _lines({**RB2_ROW, "scores": 5}), [":1:", "scores:", "K x K"]),
    "rb2-nan-score": ("rewardbench2", "s.jsonl", _lines(json.dumps(RB2_ROW).replace("-1", "NaN")), [":1:", "scores:"]),
    "rb2-num-correct-0": ("rewardbench2", "s.jsonl", _lines({**RB2_ROW, "num_correct": 0}), [":1:", "num_correct:"]),
    "rb2-num-correct-all": ("rewardbench2", "s.jsonl", _lines({**RB2_ROW, "num_correct": 2}), [":1:", "num_correct:"]),
    "rb2-num-correct-half": (
        "rewardbench2",
        "s.jsonl",
        _lines({**RB2_ROW, "scores": [[0] * 3] * 3, "num_correct": 1.5}),
        [":1:", "num_correct:"],
    ),
    "rb2-rewards-length": ("rewardbench2", "s.jsonl", _lines({**RB2_ROW, "rewards": [1.0]}), [":1:", "rewards:"]),
    "rb2-no-id": ("rewardbench2", "s.jsonl", _lines({k: v for k, v in RB2_ROW.items() if k != "id"}), [":1:", "id:", "missing"]),
    "rb2-no-subset": ("rewardbench2", "s.jsonl", _lines({k: v for k, v in RB2_ROW.items() if k != "subset"}), [":1:", "subset:"]),
    "rm-scores-2x2": ("rmbench", "s.jsonl", _lines({**RM_ROW, "scores": [[1, 1], [1, 1]]}), [":1:", "scores:", "3 x 3"]),
    "rm-scores-string": (
        "rmbench",
        "s.jsonl",
        _lines({**RM_ROW, "scores": [[1, 1, "x"], [1, 1, 1], [1, 1, 1]]}),
        [":1:", "scores:"],
    ),
    "rm-matrix-short": ("rmbench", "s.jsonl", _lines({"domain": "chat", "matrix": [[1, 0]]}), [":1:", "matrix:"]),
    "rm-matrix-half": (
        "rmbench",
        "s.jsonl",
        _lines({"domain": "chat", "matrix": [[1, 0.5, 1], [1, 1, 1], [1, 1, 1]]}),
        [":1:", "matrix:", "0 / 1"],
    ),
    "rm-no-domain": ("rmbench", "s.jsonl", _lines({"scores": RM_ROW["scores"]}), [":1:", "domain:"]),
    "jb-label-a-equals-b": (
        "judgebench",
        "s.jsonl",
        _lines(JB_EXAMPLE, {**JB_EXAMPLE, "label": "A=B"}),
        [":2:", "label:", "A=B"],
    ),
    "jb-unknown-source": ("judgebench", "s.jsonl", _lines({**JB_EXAMPLE, "source": "gsm8k"}), [":1:", "source:", "gsm8k"]),
    "jb-score-nan": (
        "judgebench",
        "s.jsonl",
        _lines(json.dumps(JB_EXAMPLE).replace(": 0.5", ": NaN")),
        [":1:", "score:", "finite"],
    ),
    "rmb-unknown-set": ("rmb", "s.jsonl", _lines({**RMB_EXAMPLE, "set": "listwise"}), [":1:", "set:", "listwise"]),
    "rmb-unknown-goal": ("rmb", "s.jsonl", _lines(RMB_EXAMPLE, {**RMB_EXAMPLE, "goal": "Honesty"}), [":2:", "goal:", "Honesty"]),
    "rmb-pairwise-two-scores": ("rmb", "s.jsonl", _lines({**RMB_EXAMPLE, "set": "pairwise"}), [":1:", "scores:", "list of 1"]),
    "rmb-no-scores": ("rmb", "s.jsonl", _lines({k: v for k, v in RMB_EXAMPLE.items() if k != "scores"}), [":1:", "scores:"]),
    "jb-no-score": ("judgebench", "s.jsonl", _lines({k: v for k, v in JB_EXAMPLE.items() if k != "score"}), [":1:", "score:"]),
}


@pytest.mark.parametrize("case", list(SCORES_CASES), ids=list(SCORES_CASES))
def test_bad_scores_files_are_one_line_naming_file_line_and_field(tmp_path, case):
    evaluator, name, content, needles = SCORES_CASES[case]
    scores = tmp_path / (name or "missing.jsonl")
    if content is not None:
        scores.write_bytes(content)
    output = tmp_path / "results.json"
    output.write_text("results of an earlier run\n")
    before = snapshot(tmp_path)
    result = run("eval", evaluator, "--scores", scores, "-o", output)
    assert_one_line_error(result, str(scores), *needles)
    assert snapshot(tmp_path) == before and result.stdout == ""


# ----------------------------------------------------------------------------------------------------
# Options and data of a model run: refused before the model is loaded and before anything is written


def _inputs(root: Path, model: Path) -> dict[str, Path]:
    files = {"rb": root / "rb.jsonl", "pairs": root / "pairs.jsonl", "rm": root / "rm", "plain": root / "notes.txt"}
    row = {"prompt": "p", "chosen": "a", "rejected": "b", "subset": "hep-go", "id": 0}
    files["rb"].write_bytes(_lines(row))
    files["pairs"].write_bytes(_lines({"prompt": "p", "chosen": "a", "rejected": "b"}))
    files["rm"].mkdir()
    (files["rm"] / "chat_filtered.json").write_text(json.dumps([{"prompt": "p", "chosen": ["a"] * 3, "rejected": ["b"] * 3}]))
    files["plain"].write_text("not a folder\n")
    return files


OPTION_CASES = {
    # name: (arguments, with {model}, {rb}, {pairs}, {rm}, {plain}, {tmp} filled in; needles)
    "batch-size-0": (["rewardbench", "-m", "{model}", "--data", "{rb}", "--batch-size", "0"], ["--batch-size", "got 0"]),
    "batch-size-negative": (["pairs", "-m", "{model}", "--data", "{pairs}", "--batch-size", "-3"], ["--batch-size"]),
    "max-length-0": (["rmbench", "-m", "{model}", "--data", "{rm}", "--max-length", "0"], ["--max-length"]),
    "limit-0": (["pairs", "-m", "{model}", "--data", "{pairs}", "--limit", "0"], ["--limit"]),
    "limit-negative": (["rmbench", "-m", "{model}", "--data", "{rm}", "--limit", "-1"], ["--limit"]),
    "dtype-unknown": (["cyclic", "-m", "{model}", "--dtype", "float64"], ["--dtype", "float64"]),
    "device-unknown": (["rewardbench2", "-m", "{model}", "--data", "{rb}", "--device", "tpu"], ["--device", "tpu"]),
    "device-absent": (
        ["pairs", "-m", "{model}", "--data", "{pairs}", "--device", "cuda:7"],
        ["--device cuda:7", "no such device"],
    ),
    "model-and-scores": (["pairs", "-m", "{model}", "--scores", "{pairs}"], ["either --model"]),
    "data-missing-file": (["rewardbench", "-m", "{model}", "--data", "{tmp}/none.jsonl"], ["none.jsonl", "no such file"]),
    "data-missing-folder": (["rmbench", "-m", "{model}", "--data", "{tmp}/none"], ["none", "no such file or folder"]),
    "data-missing-pairs": (["pairs", "-m", "{model}", "--data", "{tmp}/none.jsonl"], ["none.jsonl", "no such file"]),
    "output-onto-data": (
        ["pairs", "-m", "{model}", "--data", "{pairs}", "-o", "{pairs}"],
        ["--output", "pairs.jsonl", "is the input"],
    ),
    "examples-onto-data": (
        ["rewardbench", "-m", "{model}", "--data", "{rb}", "--examples", "{rb}"],
        ["--examples", "rb.jsonl", "is the input"],
    ),
    "output-onto-scores": (["pairs", "--scores", "{pairs}", "-o", "{pairs}"], ["--output", "is the input"]),
    "output-onto-model-file": (
        ["cyclic", "-m", "{model}", "-o", "{model}/config.json"],
        ["--output", "config.json", "is the input"],
    ),
    "output-onto-rmbench-file": (
        ["rmbench", "-m", "{model}", "--data", "{rm}", "-o", "{rm}/chat_filtered.json"],
        ["--output", "is the input"],
    ),
    "output-under-a-file": (
        ["pairs", "-m", "{model}", "--data", "{pairs}", "-o", "{plain}/out.json"],
        ["--output", "notes.txt", "not a directory"],
    ),
    "examples-under-a-file": (
        ["cyclic", "-m", "{model}", "--examples", "{plain}/deep/ex.jsonl"],
        ["--examples", "not a directory"],
    ),
    "output-is-a-folder": (["pairs", "-m", "{model}", "--data", "{pairs}", "-o", "{rm}"], ["--output", "is a directory"]),
    "examples-not-jsonl": (
        ["pairs", "-m", "{model}", "--data", "{pairs}", "--examples", "{tmp}/ex.json"],
        ["--examples", "*.jsonl"],
    ),
    "examples-is-output": (
        ["pairs", "-m", "{model}", "--data", "{pairs}", "-o", "{tmp}/e.jsonl", "--examples", "{tmp}/e.jsonl"],
        ["--examples", "--output"],
    ),
}

DATA_CASES = {
    # name: (evaluator, data file name, content, needles after the file name)
    "rb-not-utf8": ("rewardbench", "rb.jsonl", _lines({"prompt": "p"}, b'{"prompt": "\xe9"}'), [":2:", "UTF-8"]),
    "rb-empty": ("rewardbench", "rb.jsonl", b"", ["no rows"]),
    "rb-chosen-number": (
        "rewardbench",
        "rb.jsonl",
        _lines({"prompt": "p", "chosen": 1, "rejected": "b", "subset": "hep-go", "id": 0}),
        [":1:", "chosen:", "string"],
    ),
    "rb-missing-column": (
        "rewardbench",
        "rb.jsonl",
        _lines({"prompt": "p", "chosen": "a", "subset": "hep-go", "id": 0}),
        [":1:", "rejected"],
    ),
    "rb2-chosen-string": (
        "rewardbench2",
        "rb2.jsonl",
        _lines({"prompt": "p", "chosen": "a", "rejected": ["b"], "subset": "Math", "id": 0}),
        [":1:", "chosen:", "list"],
    ),
    "rm-not-utf8": ("rmbench", "chat_filtered.json", b'[{"prompt": "\xff"}]', ["UTF-8"]),
    "rm-empty-list": ("rmbench", "chat_filtered.json", b"[]", ["no rows"]),
    "rm-not-a-list": ("rmbench", "chat_filtered.json", b'{"prompt": "p"}', ["JSON list"]),
    "pairs-not-utf8": ("pairs", "p.jsonl", _lines(b'{"prompt": "\xe9", "chosen": "a", "rejected": "b"}'), [":1:", "UTF-8"]),
    "pairs-empty": ("pairs", "p.jsonl", b"", ["no rows"]),
    "jb-label-tie": (
        "judgebench",
        "jb.jsonl",
        _lines({**JB_ROW, "label": "A>B"}, {**JB_ROW, "label": "A=B"}),
        [":2:", "label:", "A=B"],
    ),
    "jb-unknown-source": (
        "judgebench",
        "jb.jsonl",
        _lines({**JB_ROW, "label": "A>B", "source": "gsm8k"}),
        [":1:", "source:", "gsm8k"],
    ),
    "jb-answer-number": ("judgebench", "jb.jsonl", _lines({**JB_ROW, "label": "B>A", "response_B": 3}), [":1:", "response_B:"]),
    "jb-no-label": ("judgebench", "jb.jsonl", _lines(JB_ROW), [":1:", "label"]),
}


@pytest.mark.parametrize("case", list(OPTION_CASES), ids=list(OPTION_CASES))
def test_bad_options_and_outputs_are_one_line_before_anything_runs(tmp_path, models, case):
    arguments, needles = OPTION_CASES[case]
    names = {k: str(v) for k, v in _inputs(tmp_path, models["gpm"]).items()} | {"model": str(models["gpm"]), "tmp": str(tmp_path)}
    before = snapshot(tmp_path, models["gpm"])
    result = run("eval", *(a.format(**names) for a in arguments))
    assert_one_line_error(result, *needles)
    assert snapshot(tmp_path, models["gpm"]) == before and result.stdout == ""


@pytest.mark.parametrize("case", list(DATA_CASES), ids=list(DATA_CASES))
def test_bad_data_files_are_one_line_naming_file_line_and_field(tmp_path, models, case):
    evaluator, name, content, needles = DATA_CASES[case]
    data = tmp_path / name
    data.write_bytes(content)
    output = tmp_path / "results.json"
    output.write_text("results of an earlier run\n")
    before = snapshot(tmp_path)
    result = run("eval", evaluator, "-m", models["gpm"], "--data", data, "-o", output, "--examples", tmp_path / "ex.jsonl")
    assert_one_line_error(result, str(data), *needles)
    assert snapshot(tmp_path) == before


RMB_PAIR = {"pair_uid": "u", "conversation_input": [{"role": "user", "content": "q", "language": "English"}]}
RMB_CASES = {
    # name: (file under the RMB folder, its rows, needles after the file name)
    "pairwise-no-reject": (
        "Pairwise_set/Harmlessness/S1.json",
        [{**RMB_PAIR, "chosen": {"answer": "a"}, "reject": {"answer": "b"}}, {**RMB_PAIR, "chosen": {"answer": "a"}}],
        [":2:", "reject:"],
    ),
    "pairwise-answer-number": (
        "Pairwise_set/Helpfulness/Code/Debugging.json",
        [{**RMB_PAIR, "chosen": {"answer": 3}, "reject": {"answer": "b"}}],
        [":1:", "chosen:", "answer"],
    ),
    "bon-empty-losers": (
        "BoN_set/Helpfulness/Chat/Casual.json",
        [{**RMB_PAIR, "bon_best": {"answer": "a"}, "loser_list": []}],
        [":1:", "loser_list:", "non-empty"],
    ),
    "conversation-a-string": (
        "BoN_set/Harmlessness/S2.json",
        [{"conversation_input": "q", "bon_best": {"answer": "a"}, "loser_list": [{"answer": "b"}]}],
        [":1:", "conversation_input:"],
    ),
    "no-rows": ("Pairwise_set/Harmlessness/S1.json", [], ["no rows"]),
}


@pytest.mark.parametrize("case", list(RMB_CASES), ids=list(RMB_CASES))
def test_bad_rmb_files_are_one_line_naming_file_line_and_field(tmp_path, models, case):
    name, rows, needles = RMB_CASES[case]
    data = tmp_path / "RMB_dataset" / name
    data.parent.mkdir(parents=True)
    data.write_text(json.dumps(rows))
    before = snapshot(tmp_path)
    result = run("eval", "rmb", "-m", models["gpm"], "--data", tmp_path, "-o", tmp_path / "out.json")
    assert_one_line_error(result, str(data), *needles)
    assert snapshot(tmp_path) == before


def test_rmb_needs_data_with_a_model_and_a_folder_with_its_layout(tmp_path, models):
    assert_one_line_error(run("eval", "rmb", "-m", models["gpm"]), "--data is required", "RMB_dataset")
    (tmp_path / "Pairwise_set").mkdir()
    assert_one_line_error(run("eval", "rmb", "-m", models["gpm"], "--data", tmp_path), str(tmp_path), "no RMB scenario files")


@pytest.mark.parametrize("tau", ["0", "-0.1", "1e999", "NaN", '"0.1"'])
def test_a_head_file_with_a_tau_that_is_not_a_positive_number_is_refused(tmp_path, models, tau):
    """tau 0 would write Infinity into the results (not JSON), a negative one flips every probability."""
    model = tmp_path / "model"
    shutil.copytree(models["gpm"], model)
    head = model / "preference_head.json"
    head.write_text(head.read_text().replace('"tau": 0.1', f'"tau": {tau}'))
    assert f'"tau": {tau}' in head.read_text()
    before = snapshot(tmp_path)
    result = run("eval", "cyclic", "-m", model, "--data", "cyclic:test?num_prompts=2", "-o", tmp_path / "out.json")
    assert_one_line_error(result, "preference_head.json", "tau")
    assert snapshot(tmp_path) == before


def test_results_are_never_written_with_nan_or_infinity():
    from gpmctl.utils import json_text

    assert json_text({"accuracy": 0.5}) == '{"accuracy": 0.5}'
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ValueError):
            json_text({"ece": bad})


def test_a_good_scores_file_still_aggregates(tmp_path):
    """The checks refuse nonsense only: a file --examples writes (p with score, label, bools for correct) reads back."""
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_bytes(_lines({"score": 2.0, "p": 0.88, "label": 1}, {"score": -1.0, "p": 0.27}, {"p": 0.5, "score": 0}))
    out = json.loads(run("eval", "pairs", "--scores", pairs).stdout)
    assert out["pairs"] == 3 and out["accuracy"] == pytest.approx(1 / 3)
    rb = tmp_path / "rb.jsonl"
    rb.write_bytes(
        _lines({"subset": "hep-go", "correct": True}, {"subset": "hep-go", "score_chosen": [1.0], "score_rejected": [2]})
    )
    assert json.loads(run("eval", "rewardbench", "--scores", rb).stdout)["hep-go"] == 0.5


# ----------------------------------------------------------------------------------------------------
# gpmctl plot and gpmctl recipes

LOG_TRAIN = {"event": "train", "step": 1, "loss": 0.7, "accuracy": 0.5, "lr": 1e-3}

PLOT_CASES = {
    # name: (what the run folder holds {file: content} or None for no folder, extra arguments, needles)
    "no-such-folder": (None, [], ["no such run folder"]),
    "not-a-run-folder": ({"notes.txt": b"hello\n"}, [], ["not a train-rm run folder"]),
    "gpo-run-folder": ({"iter-0/recipe.yaml": b"kind: gpo\n", "log.jsonl": _lines(LOG_TRAIN)}, [], ["train-gpo run folder"]),
    "log-bad-json": ({"log.jsonl": _lines(LOG_TRAIN, '{"event": "train",')}, [], ["log.jsonl:2:", "invalid JSON"]),
    "log-not-utf8": ({"log.jsonl": _lines(LOG_TRAIN, b'{"event": "\xe9"}')}, [], ["log.jsonl:2:", "UTF-8"]),
    "log-loss-string": ({"log.jsonl": _lines({**LOG_TRAIN, "loss": "x"})}, [], ["log.jsonl:1:", "loss:"]),
    "log-no-step": (
        {"log.jsonl": _lines({k: v for k, v in LOG_TRAIN.items() if k != "step"})},
        [],
        ["log.jsonl:1:", "step:", "missing"],
    ),
    "log-no-train-events": ({"log.jsonl": _lines({"event": "done"})}, [], ["log.jsonl", "no training events"]),
    "examples-p-above-1": (
        {"log.jsonl": _lines(LOG_TRAIN), "ex.jsonl": _lines({"p": 1.5})},
        ["--examples", "{run}/ex.jsonl"],
        ["ex.jsonl:1:", "p:", "[0, 1]"],
    ),
    "examples-missing": ({"log.jsonl": _lines(LOG_TRAIN)}, ["--examples", "{run}/none.jsonl"], ["none.jsonl", "no such file"]),
    "data-without-model": ({"log.jsonl": _lines(LOG_TRAIN)}, ["--data", "cyclic:test?num_prompts=2"], ["holds no model"]),
    "limit-0": ({"log.jsonl": _lines(LOG_TRAIN)}, ["--limit", "0"], ["--limit"]),
    "out-dir-under-a-file": (
        {"log.jsonl": _lines(LOG_TRAIN), "notes.txt": b"x"},
        ["--out-dir", "{run}/notes.txt/plots"],
        ["--out-dir", "notes.txt", "not a directory"],
    ),
    "bt-model-embeddings": ("bt", ["--data", "cyclic:test?num_prompts=2"], ["--data", "GPM"]),
}


@pytest.mark.parametrize("case", list(PLOT_CASES), ids=list(PLOT_CASES))
def test_bad_plot_inputs_are_one_line_and_draw_nothing(tmp_path, models, case):
    pytest.importorskip("matplotlib")
    files, arguments, needles = PLOT_CASES[case]
    run_dir = tmp_path / "run"
    if files == "bt":
        shutil.copytree(models["bt"], run_dir)
        (run_dir / "log.jsonl").write_bytes(_lines(LOG_TRAIN))
    for name, content in (files if isinstance(files, dict) else {}).items():
        (run_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (run_dir / name).write_bytes(content)
    before = snapshot(tmp_path)
    result = run("plot", run_dir, *(a.format(run=run_dir) for a in arguments))
    assert_one_line_error(result, *needles)
    assert snapshot(tmp_path) == before and not (run_dir / "plots").exists()


RECIPE_CASES = {
    # name: (arguments with {tmp} and {root}; needles); {tmp}/mine.yaml exists before
    "unknown-name": (["cp", "gpm_9b", "{tmp}/x.yaml"], ["gpm_9b", "no shipped recipe"]),
    "onto-an-existing-file": (["cp", "gpo_tiny", "{tmp}/mine.yaml"], ["mine.yaml", "already exists", "--force"]),
    "into-a-folder-holding-it": (["cp", "gpo_tiny", "{tmp}/folder"], ["gpo_tiny.yaml", "already exists"]),
    "under-a-file": (["cp", "gpo_tiny", "{tmp}/mine.yaml/x.yaml"], ["mine.yaml", "not a directory"]),
    "onto-the-shipped-file": (["cp", "gpo_tiny", "{root}/recipes/gpo_tiny.yaml", "--force"], ["gpo_tiny.yaml", "itself"]),
    "ls-unknown-format": (["ls", "--format", "xml"], ["--format", "xml"]),
}


@pytest.mark.parametrize("case", list(RECIPE_CASES), ids=list(RECIPE_CASES))
def test_bad_recipes_commands_are_one_line_and_overwrite_nothing(tmp_path, case):
    arguments, needles = RECIPE_CASES[case]
    (tmp_path / "mine.yaml").write_text("# my edited recipe\n")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "gpo_tiny.yaml").write_text("# my edited copy\n")
    before = snapshot(tmp_path, ROOT / "recipes")
    result = run("recipes", *(a.format(tmp=tmp_path, root=ROOT) for a in arguments))
    assert_one_line_error(result, *needles)
    assert snapshot(tmp_path, ROOT / "recipes") == before and result.stdout == ""
