"""UltraFeedback rows (binarised and the paper's cyclic triples) and recipe sources: folders, Hub ids
that fail fast offline, mixtures, and the ultrafeedback: spec."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from gpmctl.data.files import read_records, records_with_errors
from gpmctl.data.formats import ReadOptions, detect_format, input_keys, parse_row, parse_rows
from gpmctl.data.mix import weighted_interleave
from gpmctl.data.sources import parse_mixture, parse_ultrafeedback_spec, read_source
from gpmctl.data.ultrafeedback import parse_criteria
from gpmctl.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[1]


def completion(text: str, if_: str, honesty: str, truth: str, helpful: str = "3", **extra) -> dict:
    def aspect(rating: str) -> dict:
        return {"Rating": rating, "Rationale": "..."}

    return {
        "response": text,
        "annotations": {
            "instruction_following": aspect(if_),
            "honesty": aspect(honesty),
            "truthfulness": {**aspect(truth), "Type": ["0"], "Rationale For Rating": "..."},
            "helpfulness": aspect(helpful),
        },
        **extra,
    }


# A > B on instruction following, B > C on honesty, C > A on truthfulness: one cycle under the default
# criteria instruction_following > honesty > truthfulness, and no other ordering closes.
CYCLIC_ROW = {
    "source": "evol_instruct",
    "instruction": "Name a colour.",
    "completions": [completion("A", "5", "2", "1"), completion("B", "3", "4", "2"), completion("C", "1", "3", "4")],
}
# A beats B beats C on every aspect: transitive, so no cycle.
TRANSITIVE_ROW = {
    "instruction": "Name a colour.",
    "completions": [
        completion("A", "5", "5", "5", "5"),
        completion("B", "3", "3", "3", "3"),
        completion("C", "1", "1", "1", "1"),
    ],
}


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# --- UltraFeedback ---------------------------------------------------------------------------------


def test_ultrafeedback_rows_are_detected_before_gpm_custom():
    assert detect_format(CYCLIC_ROW) == "ultrafeedback"
    assert detect_format({"instruction": "q", "chosen": "a", "reject": "b"}) == "gpm-custom"


def test_binarize_takes_highest_overall_score_against_the_lowest():
    row = {
        "prompt": "q",
        "completions": [
            {"response": "mid", "overall_score": 6.0, "annotations": {}},
            {"response": "best", "overall_score": 8.5, "annotations": {}},
            {"response": "worst", "overall_score": 2.0, "annotations": {}},
            {"response": "also worst", "overall_score": 2.0, "annotations": {}},
        ],
    }
    (record,) = parse_rows(row)
    assert (record.chosen_text, record.rejected_text, record.margin) == ("best", "worst", 6.5)
    assert parse_row(row) == record


def test_binarize_falls_back_to_fine_grained_then_mean_rating_skipping_na():
    row = {
        "prompt": "q",
        "completions": [
            {"response": "x", "fine-grained_score": 3.25, "annotations": {}},
            completion("y", "N/A", "4", "4", "N/A"),  # mean of the numeric ratings: 4.0
        ],
    }
    (record,) = parse_rows(row)
    assert (record.chosen_text, record.rejected_text, record.margin) == ("y", "x", 0.75)


def test_binarize_gives_nothing_when_all_scores_tie_or_one_completion():
    tie = {"prompt": "q", "completions": [{"response": "a", "overall_score": 5}, {"response": "b", "overall_score": 5}]}
    single = {"prompt": "q", "completions": [{"response": "a", "overall_score": 5}]}
    assert parse_rows(tie) == [] and parse_rows(single) == []
    with pytest.raises(DataError, match="no pair"):
        parse_row(tie)


def test_cyclic_mode_finds_the_cycle_and_labels_each_link_by_its_criterion():
    records = parse_rows(CYCLIC_ROW, options=ReadOptions(ultrafeedback_mode="cyclic"))
    links = [(r.chosen_text, r.rejected_text, r.meta["criterion"], r.margin) for r in records]
    assert links == [("A", "B", "instruction_following", 2.0), ("B", "C", "honesty", 1.0), ("C", "A", "truthfulness", 3.0)]
    assert all(r.meta["kind"] == "cycle" and r.meta["cycle"] == 0 for r in records)
    assert records[0].meta["cycle_criteria"] == "instruction_following>honesty>truthfulness"
    assert records[0].meta["source"] == "evol_instruct" and records[0].prompt_text == "Name a colour."


def test_cyclic_mode_gives_nothing_for_a_transitive_set_or_other_criteria():
    assert parse_rows(TRANSITIVE_ROW, options=ReadOptions(ultrafeedback_mode="cyclic")) == []
    other = ReadOptions(ultrafeedback_mode="cyclic", criteria="honesty>truthfulness>helpfulness")
    assert parse_rows(CYCLIC_ROW, options=other) == []


def test_na_rating_breaks_a_cycle_link():
    row = json.loads(json.dumps(CYCLIC_ROW))
    row["completions"][2]["annotations"]["truthfulness"]["Rating"] = "N/A"
    assert parse_rows(row, options=ReadOptions(ultrafeedback_mode="cyclic")) == []


def test_cyclic_mode_on_four_completions_finds_every_cycle():
    row = json.loads(json.dumps(CYCLIC_ROW))
    row["completions"].append(completion("D", "1", "3", "5"))  # C and D are interchangeable as the third item
    records = parse_rows(row, options=ReadOptions(ultrafeedback_mode="cyclic"))
    assert Counter(r.meta["cycle"] for r in records) == {0: 3, 1: 3}


def test_criteria_names_and_aliases():
    assert parse_criteria("if>Honesty>helpfulness") == ("instruction_following", "honesty", "helpfulness")
    with pytest.raises(ValueError, match="unknown aspect 'kindness'"):
        parse_criteria("if>kindness>honesty")
    with pytest.raises(ValueError, match="at least 3"):
        parse_criteria("if>honesty")


@pytest.mark.parametrize(
    ("completions", "field", "words"),
    [
        ("none", "completions", "expected a list"),
        (["text"], "completions[0]", "expected a completion object"),
        ([{"annotations": {}}], "completions[0].response", "missing"),
        ([{"response": 3}], "completions[0].response", "got a number"),
        ([completion("a", "five", "1", "1")], "completions[0].annotations.instruction_following.Rating", "'five'"),
        ([{"response": "a", "overall_score": "9"}], "completions[0].overall_score", "finite number"),
        ([{"response": "a", "annotations": {"honesty": 4}}], "completions[0].annotations.honesty", "expected an object"),
    ],
)
def test_bad_ultrafeedback_rows_name_the_field_and_keep_the_rows_around(completions, field, words, tmp_path):
    good = {"prompt": "q", "completions": [{"response": "a", "overall_score": 2}, {"response": "b", "overall_score": 1}]}
    path = write_jsonl(tmp_path / "uf.jsonl", [good, {"instruction": "q", "completions": completions}, good])
    items = [item for _, item in records_with_errors(path)]
    assert [type(i).__name__ for i in items] == ["PreferenceRecord", "DataError", "PreferenceRecord"]
    assert str(items[1]).startswith(f"{path}:2: {field}: ") and words in str(items[1])


def test_format_override_forces_one_reader(tmp_path):
    path = write_jsonl(
        tmp_path / "msgs.jsonl",
        [
            {
                "chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "b"}],
            }
        ],
    )
    assert len(list(read_records(path))) == 1
    with pytest.raises(DataError, match=r"msgs\.jsonl:1: prompt: missing"):
        list(read_records(path, options=ReadOptions(format="explicit")))
    with pytest.raises(DataError, match=r"msgs\.jsonl:1: instruction: missing \(an UltraFeedback row"):
        list(read_records(path, options=ReadOptions(format="ultrafeedback")))
    with pytest.raises(ValueError, match="format must be one of"):
        ReadOptions(format="csv")


def test_input_keys_stand_for_prompt_chosen_rejected_and_errors_name_the_input_key(tmp_path):
    keys = ReadOptions(keys=input_keys(prompt="question", chosen="good", rejected="bad"))
    path = write_jsonl(
        tmp_path / "raw.jsonl",
        [
            {"question": "q", "good": "a", "bad": "b", "prompt": "dropped", "kind": "x"},
            {"question": " ", "good": "a", "bad": "b"},
            {"question": "q", "good": [{"role": "user", "content": "a"}], "bad": "b"},
            {"prompt": "p", "chosen": "a", "rejected": "b"},  # the canonical keys are not read in their place
        ],
    )
    items = [item for _, item in records_with_errors(path, options=keys)]
    assert (items[0].prompt_text, items[0].chosen_text, items[0].rejected_text, items[0].meta) == ("q", "a", "b", {"kind": "x"})
    assert [str(e).removeprefix(f"{path}:") for e in items[1:]] == [
        "2: question: whitespace-only text",
        "3: good[0].role: an answer must start with an assistant message, got 'user'",
        "4: good: missing",
    ]
    assert parse_rows({"question": "q", "good": "a", "bad": "b"}, options=keys)[0].prompt_text == "q"
    with pytest.raises(ValueError, match="one input key for two fields"):
        input_keys(prompt="text", chosen="text")
    with pytest.raises(ValueError, match="cannot stand for 'label'"):
        ReadOptions(keys={"score": "label"})


# --- sources ---------------------------------------------------------------------------------------


def test_ultrafeedback_spec_reads_cyclic_triples_with_criteria(tmp_path):
    path = write_jsonl(tmp_path / "uf.jsonl", [CYCLIC_ROW, TRANSITIVE_ROW, CYCLIC_ROW])
    assert len(list(read_source(f"ultrafeedback:cyclic:{path}"))) == 6
    assert len(list(read_source(f"ultrafeedback:{path}"))) == 3  # binarised: one pair per row
    spec = f"ultrafeedback:cyclic:{path}?criteria=honesty>truthfulness>helpfulness"
    assert list(read_source(spec)) == []
    _, options = parse_ultrafeedback_spec(f"ultrafeedback:cyclic:{path}?criteria=if>honesty>helpfulness")
    assert options.criteria == ("instruction_following", "honesty", "helpfulness")
    with pytest.raises(ConfigError, match="unknown aspect"):
        read_source(f"ultrafeedback:cyclic:{path}?criteria=a>b>c")


def test_folder_source_reads_every_data_file_in_sorted_order(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    write_jsonl(folder / "b.jsonl", [{"prompt": "2", "chosen": "a", "rejected": "b"}])
    write_jsonl(folder / "a.jsonl", [{"prompt": "1", "chosen": "a", "rejected": "b"}])
    (folder / "notes.txt").write_text("not data")
    (folder / ".hidden.jsonl").write_text("not read")
    assert [r.prompt_text for r in read_source(str(folder))] == ["1", "2"]
    assert [r.prompt_text for r in read_source(str(folder), limit=1)] == ["1"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="holds no data files"):
        read_source(str(empty))


def test_missing_hub_dataset_fails_fast_offline_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    code = (
        "import time; from gpmctl.data.sources import read_source\n"
        "t = time.time()\ntry:\n    read_source('nobody/no-such-dataset@default:test')\n"
        "except Exception as e:\n    print(type(e).__name__, '|', e, '|', time.time() - t)\n"
    )
    start = time.time()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=os.environ.copy())
    assert time.time() - start < 30  # the process, with imports; the call itself is timed below
    kind, message, seconds = out.stdout.strip().split(" | ")
    assert kind == "DataError" and "\n" not in message
    assert "'nobody/no-such-dataset'" in message and "pass a local file" in message and "split 'test'" in message
    assert float(seconds) < 5


def test_missing_path_with_a_data_suffix_is_no_such_file_not_a_hub_lookup(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_source(str(tmp_path / "nope.jsonl"))


def test_weighted_interleave_keeps_every_prefix_within_one_of_its_share():
    order = weighted_interleave([0.7, 0.3])
    taken = [0, 0]
    for n in range(1, 101):
        taken[next(order)] += 1
        assert abs(taken[0] - 0.7 * n) <= 1
    assert taken == [70, 30]


def test_mixture_spec_interleaves_and_repeats_a_small_part(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"prompt": f"a{i}", "chosen": "x", "rejected": "y"} for i in range(7)])
    b = write_jsonl(tmp_path / "b.jsonl", [{"prompt": f"b{i}", "chosen": "x", "rejected": "y"} for i in range(3)])
    assert parse_mixture(f"{a}:0.7,{b}:0.3") == [(str(a), 0.7), (str(b), 0.3)]
    assert parse_mixture(str(a)) is None and parse_mixture("cyclic:train?cycle_lengths=3,6") is None
    prompts = [r.prompt_text for r in read_source(f"{a}:0.3,{b}:0.7")]
    assert len(prompts) == 10 and prompts == [r.prompt_text for r in read_source(f"{a}:0.3,{b}:0.7")]
    assert sum(p.startswith("b") for p in prompts) == 7  # b's 3 rows repeated to reach its share
    assert prompts[:4] == ["b0", "a0", "b1", "b2"]
    assert len(list(read_source(f"{a},{b}", limit=4))) == 4
    with pytest.raises(ConfigError, match="positive number"):
        read_source(f"{a}:0,{b}:1")


def test_recipe_accepts_mixture_and_ultrafeedback_sources(tmp_path):
    from gpmctl.config import load_recipe

    uf = write_jsonl(tmp_path / "uf.jsonl", [CYCLIC_ROW])
    recipe = load_recipe(ROOT / "recipes" / "cyclic_tiny_gpm.yaml", [f"data.train=ultrafeedback:cyclic:{uf}"])
    assert len(list(read_source(recipe.data.train))) == 3
    mixed = f"ultrafeedback:cyclic:{uf}:0.5,cyclic:test?num_prompts=2:0.5"
    recipe = load_recipe(ROOT / "recipes" / "cyclic_tiny_gpm.yaml", [f"data.train={mixed}"])
    kinds = [r.meta.get("criterion", "generator") for r in read_source(recipe.data.train)]
    assert len(kinds) == 3 + 12 and kinds[:2] == ["instruction_following", "generator"]


def test_recipe_key_options_rename_the_rows_train_rm_reads(tmp_path):
    from gpmctl.config import load_recipe
    from gpmctl.data.tokenize import SequenceEncoder
    from gpmctl.models.sources import load_tokenizer
    from gpmctl.train.reward import load_pairs

    raw = write_jsonl(tmp_path / "raw.jsonl", [{"question": f"q{i}", "good": "yes", "bad": "no"} for i in range(4)])
    keys = ["data.prompt_key=question", "data.chosen_key=good", "data.rejected_key=bad"]
    recipe = load_recipe(ROOT / "recipes" / "cyclic_tiny_gpm.yaml", [f"data.train={raw}", f"data.eval={raw}", *keys])
    encoder = SequenceEncoder(load_tokenizer("tiny"), 64)
    train, held = load_pairs(recipe, encoder)
    assert len(train) == len(held) == 4
    plain = write_jsonl(tmp_path / "plain.jsonl", [{"prompt": f"q{i}", "chosen": "yes", "rejected": "no"} for i in range(4)])
    expected = [encoder.encode_pair(r) for r in read_records(plain)]
    assert [p.chosen.ids.tolist() for p in train] == [p.chosen.ids.tolist() for p in expected]
