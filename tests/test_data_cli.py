"""`gpmctl data validate|convert|stats|split|mix`: one-pass validation with file:line, lossless
round trips through parquet, deterministic by-prompt splits and weighted mixtures, hand-checked stats."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from gpmctl.cli import app
from gpmctl.data.files import read_records
from gpmctl.data.formats import ReadOptions
from gpmctl.data.sources import read_source
from gpmctl.data.split import held_out

ROOT = Path(__file__).resolve().parent.parent
HH_FILE = ROOT.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "GPMCTL_DEBUG": ""}


def cli(*args: str):
    result = CliRunner().invoke(app, ["data", *args], catch_exceptions=False)
    return result


def gpmctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gpmctl", *args], capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=120)


def write_rows(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def pair(prompt: str, chosen: str = "yes", rejected: str = "no", **extra) -> dict:
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, **extra}


def canonical(path: Path) -> list[dict]:
    return [r.to_json() for r in read_records(path, options=ReadOptions(allow_empty_responses=True))]


def test_validate_reports_every_problem_in_one_pass_with_file_and_line(tmp_path):
    path = write_rows(
        tmp_path / "mixed.jsonl",
        [
            pair("q1"),
            '{"prompt": "q2", "chosen": "a"',  # line 2: cut short
            pair("q3"),
            pair("q4", label=1.5),  # line 4: label out of range
            pair("q5"),
            {"prompt": "q6", "chosen": "same", "rejected": "same"},  # line 6: identical answers
            pair("q7"),
        ],
    )
    result = cli("validate", str(path))
    assert result.exit_code == 2
    problems = result.stderr.strip().splitlines()
    assert len(problems) == 4, result.stderr  # three problems and the summary line
    assert problems[0].startswith(f"{path}:2: invalid JSON")
    assert problems[1].startswith(f"{path}:4: label: ")
    assert problems[2].startswith(f"{path}:6: rejected: identical to chosen")
    assert "7 rows, 3 problem(s)" in problems[3]
    assert result.stdout == ""


def test_validate_of_good_files_exits_zero(tmp_path):
    path = write_rows(tmp_path / "good.jsonl", [pair("a"), pair("b")])
    result = cli("validate", str(path), str(path))
    assert result.exit_code == 0
    assert "4 rows, 0 problem(s)" in result.stderr


def test_convert_jsonl_to_parquet_and_back_keeps_canonical_rows(tmp_path):
    rows = [
        pair("plain", margin=2, id=7, subset="s", kind="easy", score=3),
        {
            "prompt": [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hi"}],
            "chosen": "hello",
            "rejected": [{"role": "assistant", "content": "go"}, {"role": "user", "content": "?"}],
            "label": 0.75,
            "kind": "hard",
            "score": 1.5,
        },
        {"chosen": "\n\nHuman: hey\n\nAssistant: hi there", "rejected": "\n\nHuman: hey\n\nAssistant: ", "flag": True},
        {"instruction": "pick", "chosen": {"response": "A"}, "reject": "B", "label": 3},
    ]
    src = write_rows(tmp_path / "in.jsonl", rows)
    assert cli("convert", str(src), str(tmp_path / "mid.parquet"), "--allow-empty-responses").exit_code == 0
    assert cli("convert", str(tmp_path / "mid.parquet"), str(tmp_path / "out.jsonl.gz"), "--allow-empty-responses").exit_code == 0
    assert canonical(tmp_path / "out.jsonl.gz") == canonical(src)
    assert canonical(src)[0]["id"] == "7" and canonical(src)[0]["score"] == 3


def test_convert_renames_columns_and_writes_stdout(tmp_path):
    src = write_rows(tmp_path / "raw.jsonl", [{"question": "q", "good": "a", "bad": "b"}])
    result = cli("convert", str(src), "-", "--prompt-key", "question", "--chosen-key", "good", "--rejected-key", "bad")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {"prompt": "q", "chosen": "a", "rejected": "b"}


def test_validate_and_stats_take_the_key_options_of_convert(tmp_path):
    src = write_rows(tmp_path / "raw.jsonl", [{"question": "q", "good": "a", "bad": "b"}, {"question": "q", "good": "a"}])
    keys = ("--prompt-key", "question", "--chosen-key", "good", "--rejected-key", "bad")
    result = cli("validate", str(src), *keys)
    assert result.exit_code == 2
    assert result.stderr.splitlines()[0] == f"{src}:2: bad: missing" and "2 rows, 1 problem(s)" in result.stderr
    stats = json.loads(cli("stats", str(src), *keys).stdout)
    assert (stats["valid"], stats["invalid"], stats["formats"]) == (1, 1, {"explicit": 1})
    result = gpmctl("data", "validate", str(src), "--prompt-key", "question", "--chosen-key", "question")
    assert result.returncode == 2 and "one input key for two fields" in result.stderr and "Traceback" not in result.stderr


def test_convert_stops_on_a_bad_row_and_leaves_no_output(tmp_path):
    src = write_rows(tmp_path / "in.jsonl", [pair("a"), {"prompt": "b", "chosen": 3, "rejected": "x"}, pair("c")])
    out = tmp_path / "out.jsonl"
    result = gpmctl("data", "convert", str(src), str(out))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert f"{src}:2: chosen: " in lines[0]
    assert not out.exists() and list(tmp_path.iterdir()) == [src]


def test_convert_skip_invalid_counts_and_reports_the_skipped_rows(tmp_path):
    src = write_rows(tmp_path / "in.jsonl", [pair("a"), "not json", pair("c")])
    result = cli("convert", str(src), str(tmp_path / "out.jsonl"), "--skip-invalid")
    assert result.exit_code == 0
    assert f"{src}:2: invalid JSON" in result.stderr and "skipped 1 invalid rows" in result.stderr
    assert [r["prompt"] for r in canonical(tmp_path / "out.jsonl")] == ["a", "c"]


def test_convert_to_parquet_leaves_out_columns_that_are_null_in_every_row(tmp_path):
    """TRL's RewardTrainer reads the columns as they are: an all-null margin column would reach its collator."""
    datasets = pytest.importorskip("datasets")
    pq = pytest.importorskip("pyarrow.parquet")
    src = write_rows(tmp_path / "in.jsonl", [pair("a", kind="easy"), pair("b", margin=0.5), pair("c", id=3)])
    out = tmp_path / "pairs.parquet"
    assert cli("convert", str(src), str(out)).exit_code == 0
    table = datasets.load_dataset("parquet", data_files=str(out), split="train", cache_dir=str(tmp_path / "cache"))
    assert table.column_names == ["prompt", "chosen", "rejected", "margin", "id", "kind"]  # no label, no subset
    assert table[0]["prompt"] == [{"role": "user", "content": "a"}]
    assert table[0]["chosen"] == [{"role": "assistant", "content": "yes"}]
    assert (table["margin"], table["id"], table["kind"]) == ([None, 0.5, None], [None, None, "3"], ["easy", None, None])
    assert canonical(out) == canonical(src)

    for rows, name, count in (([pair("a"), pair("b")], "plain.parquet", 2), (["not json"], "empty.parquet", 0)):
        assert cli("convert", str(write_rows(src, rows)), str(tmp_path / name), "--skip-invalid").exit_code == 0
        table = pq.read_table(tmp_path / name)
        assert table.column_names == ["prompt", "chosen", "rejected"] and table.num_rows == count


def test_parquet_from_convert_goes_through_trl_reward_trainer_preprocessing(tmp_path):
    datasets = pytest.importorskip("datasets")
    reward_trainer = pytest.importorskip("trl.trainer.reward_trainer")
    from trl.data_utils import is_conversational

    from gpmctl.models.sources import load_tokenizer

    src = write_rows(tmp_path / "in.jsonl", [{"chosen": "The sky is blue.", "rejected": "The sky is green."}, pair("b")])
    out = tmp_path / "pairs.parquet"
    assert cli("convert", str(src), str(out)).exit_code == 0
    table = datasets.load_dataset("parquet", data_files=str(out), split="train", cache_dir=str(tmp_path / "cache"))
    assert is_conversational(table[0])
    settings = SimpleNamespace(dataset_num_proc=None, max_length=None)
    prepared = reward_trainer.RewardTrainer._prepare_dataset(None, table, load_tokenizer("tiny"), settings, "train")
    batch = reward_trainer.DataCollatorForPreference(pad_token_id=0)([prepared[0], prepared[1]])
    assert batch["input_ids"].shape[0] == 4 and "margin" not in batch


@pytest.mark.skipif(not HH_FILE.exists(), reason="HH-RLHF sample not present")
def test_convert_of_hh_rlhf_keeps_all_2312_rows(tmp_path):
    result = cli("convert", str(HH_FILE), str(tmp_path / "hh.parquet"), "--allow-empty-responses")  # 4 preferred empty replies
    assert result.exit_code == 0 and "2,312 rows" in result.stderr
    records = canonical(tmp_path / "hh.parquet")
    assert len(records) == 2312
    assert records == canonical(HH_FILE)


def test_split_is_by_prompt_deterministic_and_matches_train_rm_rule(tmp_path):
    rows = [pair(f"prompt {i % 40}", f"good {i}", f"bad {i}") for i in range(200)]
    src = write_rows(tmp_path / "all.jsonl", rows)
    first = json.loads(cli("split", str(src), str(tmp_path / "a"), "--eval-fraction", "0.25", "--seed", "3").stdout)
    json.loads(cli("split", str(src), str(tmp_path / "b"), "--eval-fraction", "0.25", "--seed", "3").stdout)
    assert first["train_rows"] + first["eval_rows"] == 200 and first["eval_rows"] > 0 and first["train_rows"] > 0
    for name in ("train.jsonl", "eval.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    train, held = canonical(tmp_path / "a" / "train.jsonl"), canonical(tmp_path / "a" / "eval.jsonl")
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held}
    # The rule train-rm splits by too (gpmctl.data.split: hash of json-dumped prompt messages + seed).
    records = list(read_records(src))
    assert [r.to_json() for r in records if held_out(r, 0.25, 3)] == held
    cli("split", str(src), str(tmp_path / "c"), "--eval-fraction", "0.25", "--seed", "4")
    assert canonical(tmp_path / "c" / "eval.jsonl") != held  # another seed, another split


def test_mix_honours_weights_and_is_deterministic(tmp_path):
    a = write_rows(tmp_path / "a.jsonl", [pair(f"a{i}") for i in range(100)])
    b = write_rows(tmp_path / "b.jsonl", [pair(f"b{i}") for i in range(30)])
    args = [f"{a}:3", f"{b}:1", "--total", "2000"]
    first = cli("mix", str(tmp_path / "m1.jsonl"), *args)
    cli("mix", str(tmp_path / "m2.jsonl"), *args)
    assert first.exit_code == 0
    assert (tmp_path / "m1.jsonl").read_bytes() == (tmp_path / "m2.jsonl").read_bytes()
    prompts = [r["prompt"] for r in canonical(tmp_path / "m1.jsonl")]
    assert len(prompts) == 2000
    counts = Counter()
    for n, prompt in enumerate(prompts, start=1):  # the rule of gpmctl.data.mix: every prefix within one row of its share
        counts[prompt[0]] += 1
        assert abs(counts["a"] - 0.75 * n) <= 1 and abs(counts["b"] - 0.25 * n) <= 1
    assert counts == {"a": 1500, "b": 500}
    assert [p for p in prompts if p[0] == "b"] == [f"b{i % 30}" for i in range(500)]  # in file order, starting again
    summary = json.loads(first.stdout)
    assert [s["taken"] for s in summary["sources"]] == [counts["a"], counts["b"]]
    assert summary["sources"][1]["repeated"] == counts["b"] - 30  # the small source starts again when it runs out
    assert [s["share"] for s in summary["sources"]] == [0.75, 0.25]
    seeded = cli("mix", str(tmp_path / "m3.jsonl"), *args, "--seed", "6")  # accepted, ignored, said so
    assert seeded.exit_code == 0 and (tmp_path / "m3.jsonl").read_bytes() == (tmp_path / "m1.jsonl").read_bytes()
    assert "--seed is ignored" in seeded.stderr and "--seed" not in cli("mix", "--help").stdout


def test_mix_writes_the_records_a_recipe_mixture_reads(tmp_path):
    a = write_rows(tmp_path / "a.jsonl", [pair(f"a{i}", margin=i) for i in range(4)])
    b = write_rows(tmp_path / "b.jsonl", [pair(f"b{i}", label=0.75) for i in range(6)])
    result = cli("mix", str(tmp_path / "m.jsonl"), f"{a}:0.7", f"{b}:0.3")
    assert result.exit_code == 0
    recipe = [r.to_json() for r in read_source(f"{a}:0.7,{b}:0.3")]
    assert canonical(tmp_path / "m.jsonl") == recipe
    assert len(recipe) == 10 and sum(r["prompt"][0] == "a" for r in recipe) == 7  # a's 4 rows repeated to reach its share


def test_mix_default_total_is_the_sum_of_source_sizes(tmp_path):
    a = write_rows(tmp_path / "a.jsonl", [pair(f"a{i}") for i in range(10)])
    b = write_rows(tmp_path / "b.jsonl", [pair(f"b{i}") for i in range(5)])
    summary = json.loads(cli("mix", str(tmp_path / "m.jsonl"), str(a), f"{b}:2").stdout)
    assert summary["rows"] == 15 and len(canonical(tmp_path / "m.jsonl")) == 15


def test_mix_rejects_a_bad_weight_with_one_line(tmp_path):
    a = write_rows(tmp_path / "a.jsonl", [pair("a")])
    result = gpmctl("data", "mix", str(tmp_path / "m.jsonl"), f"{a}:-1")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "weight" in result.stderr and "Traceback" not in result.stderr


def test_stats_counts_a_hand_made_file(tmp_path):
    path = write_rows(
        tmp_path / "s.jsonl",
        [
            pair("Hello  World", "abcd", "ab"),  # prompt 12 chars
            pair("hello world", "abcd", "ab"),  # same prompt once normalised
            pair("Hello  World", "abcd", "ab"),  # duplicate of row 1
            pair("Hello  World", "ab", "abcd"),  # row 1 swapped: a tie
            pair("q", "", "abcdefgh"),  # empty chosen
            "broken",  # invalid
            {"chosen": "\n\nHuman: hi\n\nAssistant: yo", "rejected": "\n\nHuman: hi\n\nAssistant: no"},
        ],
    )
    other = write_rows(tmp_path / "o.jsonl", [pair("HELLO world"), pair("unrelated")])
    result = cli("stats", str(path), "--against", str(other), "--tokenizer", "tiny")
    assert result.exit_code == 0, result.stderr
    s = json.loads(result.stdout)
    assert (s["rows"], s["valid"], s["invalid"]) == (7, 6, 1)
    assert s["formats"] == {"explicit": 5, "hh-rlhf": 1}
    assert (s["duplicate_pairs"], s["swapped_pairs"], s["distinct_prompts"]) == (1, 1, 3)
    assert s["empty_responses"] == {"chosen": 1, "rejected": 0}
    # chosen lengths 4, 4, 4, 2, 0, 2 -> sorted 0 2 2 4 4 4: nearest-rank p50 = 3rd = 2, p90 = 6th = 4
    assert s["chars"]["chosen"] == {"p50": 2, "p90": 4, "p99": 4, "max": 4}
    assert s["chars"]["prompt"]["max"] == 12
    assert s["tokens"]["chosen"]["max"] >= 1
    assert s["against"]["shared_prompts"] == 1 and s["against"]["rows_with_shared_prompt"] == 4


def test_every_data_command_reads_the_sources_a_recipe_reads(tmp_path):
    """A folder (jsonl and csv), a generator and a mixture of them: each command sees read_source's records."""
    folder = tmp_path / "pairs"
    folder.mkdir()
    write_rows(folder / "a.jsonl", [pair(f"a{i}") for i in range(3)])
    (folder / "b.csv").write_text("prompt,chosen,rejected\nb0,yes,no\nb1,yes,no\n")
    spec = f"{folder}:2,cyclic:test?num_prompts=2:1"
    expected = [r.to_json() for r in read_source(spec)]
    assert len(expected) == 5 + 12

    assert "1 file(s), 17 rows, 0 problem(s)" in cli("validate", spec).stderr
    assert json.loads(cli("stats", spec).stdout)["valid"] == 17
    assert cli("convert", spec, str(tmp_path / "all.jsonl")).exit_code == 0
    assert canonical(tmp_path / "all.jsonl") == expected
    split_counts = json.loads(cli("split", spec, str(tmp_path / "split")).stdout)
    assert split_counts["train_rows"] + split_counts["eval_rows"] == 17
    assert json.loads(cli("mix", str(tmp_path / "mix.jsonl"), spec).stdout)["rows"] == 17
    assert canonical(tmp_path / "mix.jsonl") == expected  # a mixture argument: the recipe mixture, in its order

    write_rows(folder / "c.jsonl", [pair("c0"), {"prompt": "c1", "chosen": "same", "rejected": "same"}])
    result = cli("validate", spec, str(folder))
    assert result.exit_code == 2
    assert (
        result.stderr.splitlines()[:2]
        == [f"{folder / 'c.jsonl'}:2: rejected: identical to chosen; a pair needs two different answers"] * 2
    )


def test_every_data_command_help_has_an_example():
    for command in ("validate", "convert", "stats", "split", "mix", "cyclic"):
        result = cli(command, "--help")
        assert result.exit_code == 0 and "Example: gpmctl data " + command in result.stdout


def uf_completion(text: str, if_: str, honesty: str, truth: str) -> dict:
    return {
        "response": text,
        "annotations": {
            "instruction_following": {"Rating": if_},
            "honesty": {"Rating": honesty},
            "truthfulness": {"Rating": truth},
            "helpfulness": {"Rating": "N/A"},
        },
    }


UF_CYCLE = {
    "instruction": "Name a colour.",
    "completions": [uf_completion("A", "5", "2", "1"), uf_completion("B", "3", "4", "2"), uf_completion("C", "1", "3", "4")],
}


def test_convert_ultrafeedback_cyclic_writes_the_labelled_links(tmp_path):
    src = write_rows(tmp_path / "uf.jsonl", [UF_CYCLE])
    dst = tmp_path / "cyc.jsonl"
    result = cli("convert", str(src), str(dst), "--ultrafeedback", "cyclic")
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in dst.read_text().splitlines()]
    assert [(r["chosen"], r["rejected"], r["criterion"], r["kind"]) for r in rows] == [
        ("A", "B", "instruction_following", "cycle"),
        ("B", "C", "honesty", "cycle"),
        ("C", "A", "truthfulness", "cycle"),
    ]
    result = cli("convert", str(src), str(dst), "--ultrafeedback", "cyclic", "--criteria", "honesty>truthfulness>helpfulness")
    assert result.exit_code == 0 and dst.read_text() == ""
    result = cli("convert", str(src), str(dst))  # binarize by mean rating: B (3) over A (8/3, first of the tied lowest)
    rows = [json.loads(line) for line in dst.read_text().splitlines()]
    assert [(r["chosen"], r["rejected"]) for r in rows] == [("B", "A")] and rows[0]["margin"] == pytest.approx(1 / 3)


def test_format_flag_forces_one_reader_and_rejects_unknown_names(tmp_path):
    msgs = {
        "chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
        "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "b"}],
    }
    path = write_rows(tmp_path / "msgs.jsonl", [msgs])
    assert cli("validate", str(path), "--format", "messages").exit_code == 0
    result = cli("validate", str(path), "--format", "explicit")
    assert result.exit_code == 2 and f"{path}:1: prompt: missing" in result.stderr
    bad = gpmctl("data", "validate", str(path), "--format", "csv")
    assert bad.returncode == 2 and "format must be one of" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    bad = gpmctl("data", "convert", str(path), str(tmp_path / "o.jsonl"), "--ultrafeedback", "cyclic", "--criteria", "if>x>y")
    assert bad.returncode == 2 and "unknown aspect 'x'" in bad.stderr
