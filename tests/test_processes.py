"""`gpmctl score` and `gpmctl eval` on several processes (--num-processes): two CPU processes on gloo give the
bytes one process writes, resume per chunk, and stop on a bad line with one error line.

Each 2-process run re-executes gpmctl under `accelerate launch` (~10-20 s on 2 cores, mostly imports); the
one-process references run in this process (two threads, where each launched process has one).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gpmctl.cli import app
from gpmctl.engine.launch import plan_processes

REPO = Path(__file__).resolve().parent.parent
WORDS = "apple banana cherry dog elephant fox grape house ice jam kite lemon mango nut olive pear".split()


def gpmctl(*args: str, timeout: float = 180, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    return subprocess.run(
        [sys.executable, "-m", "gpmctl", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, input=stdin
    )


def in_process(*args: str) -> None:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output


def text(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choices(WORDS, k=rng.randint(low, high)))


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    """An untrained tiny GPM with a gate: the processes are under test, not the model."""
    from gpmctl.config import ModelConfig, TinyBackbone
    from gpmctl.models.build import build_model
    from gpmctl.models.io import save_model
    from gpmctl.models.sources import load_tokenizer

    tok = load_tokenizer("tiny")
    tiny = TinyBackbone(hidden_size=32, num_layers=1, intermediate_size=64, initializer_range=0.3)
    folder = str(tmp_path_factory.mktemp("gpm"))
    save_model(build_model(ModelConfig(kind="gpm", dim=4, tau=0.1, gate=True, tiny=tiny), tok, seed=0), folder, tok)
    return folder


@pytest.fixture(scope="module")
def responses(tmp_path_factory) -> list[str]:
    """Three aligned files of 23 lines (prompts and responses of different lengths: length-sorted batches)."""
    root, rng = tmp_path_factory.mktemp("responses"), random.Random(0)
    prompts = [f"question {i}: {text(rng, 0, 8)}" for i in range(23)]
    paths = []
    for name in "abc":
        rows = [{"id": f"q{i}", "prompt": p, "response": text(rng, 1, 14)} for i, p in enumerate(prompts)]
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths.append(str(root / f"{name}.jsonl"))
    return paths


# ----------------------------------------------------------------------------------------------------
# No processes started: the command line passed on, the launch plan.


def test_the_relaunched_command_line_repeats_every_value_given():
    import typer.main

    from gpmctl.cli.processes import same_command

    seen = {}
    command = typer.main.get_command(app)
    argv = [
        "score",
        "a.jsonl",
        "b.jsonl",
        "-m",
        "runs/x",
        "--no-normalize",
        "--embed",
        "--chunk-lines",
        "8",
        "--num-processes",
        "2",
    ]
    with command.make_context("gpmctl", list(argv)) as ctx:
        sub = ctx.command.get_command(ctx, "score")
        with sub.make_context("score", argv[1:], parent=ctx) as sub_ctx:
            seen["argv"] = same_command(sub_ctx)
    assert seen["argv"] == [
        "score",
        "a.jsonl",
        "b.jsonl",
        "--model",
        "runs/x",
        "--embed",
        "--chunk-lines",
        "8",
        "--no-normalize",
        "--num-processes",
        "2",
    ]


@pytest.mark.parametrize(
    "env,machines,in_place",
    [
        ({}, 1, False),
        ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}, None, True),  # torchrun, accelerate launch
        ({"SLURM_STEP_NUM_TASKS": "2", "SLURM_STEP_NUM_NODES": "2", "SLURM_NODEID": "1", "MASTER_ADDR": "n1"}, 2, False),
    ],
)
def test_scoring_commands_relaunch_with_the_ddp_profile_one_machine_per_srun_node(env, machines, in_place):
    plan = plan_processes(4, ["score", "a", "b"], "cpu", env)
    assert (plan.command is None) == in_place
    if in_place:
        assert plan.world_size == 2
        return
    cmd = plan.command
    assert cmd[cmd.index("--config_file") + 1].endswith("ddp.yaml") and cmd[cmd.index("--num_processes") + 1] == "4"
    assert cmd[cmd.index("--num_machines") + 1] == str(machines) and cmd[-5:] == ["-m", "gpmctl", "score", "a", "b"]
    assert plan.env["ACCELERATE_USE_CPU"] == "1" and int(plan.env["OMP_NUM_THREADS"]) >= 1


# ----------------------------------------------------------------------------------------------------
# Two processes on gloo.


def test_score_on_two_processes_writes_the_bytes_of_one_process(model, responses, tmp_path):
    a, b, _ = responses
    in_process("score", a, b, "-m", model, "--chunk-lines", "4", "--batch-size", "3", "-o", str(tmp_path / "one.jsonl"))
    two = gpmctl("score", a, b, "-m", model, "--chunk-lines", "4", "--batch-size", "3", "--num-processes", "2")
    assert two.returncode == 0, two.stderr[-3000:]
    assert "2 processes" in two.stderr and "scored 23 lines" in two.stderr
    assert two.stdout == (tmp_path / "one.jsonl").read_text()


def test_stdin_on_two_processes_is_read_once_by_process_0(model, responses, tmp_path):
    a, b, _ = responses
    in_process("score", a, b, "-m", model, "--chunk-lines", "4", "-o", str(tmp_path / "one.jsonl"))
    two = gpmctl("score", "-", b, "-m", model, "--chunk-lines", "4", "--num-processes", "2", stdin=Path(a).read_text())
    assert two.returncode == 0, two.stderr[-3000:]
    assert "scored 23 lines" in two.stderr and two.stdout == (tmp_path / "one.jsonl").read_text()


def test_three_files_on_two_processes_resume_an_interrupted_output_to_the_same_bytes(model, responses, tmp_path):
    args = [*responses, "-m", model, "--chunk-lines", "4", "--batch-size", "5", "--share-prompt", "false"]
    in_process("score", *args, "-o", str(tmp_path / "one.jsonl"))
    one = (tmp_path / "one.jsonl").read_bytes()
    cut = one[: one.index(b"\n", one.index(b'"line": 6,')) + 40]  # lines 1-6 and part of 7: one complete chunk
    (tmp_path / "two.jsonl.partial").write_bytes(cut)
    two = gpmctl("score", *args, "-o", str(tmp_path / "two.jsonl"), "--resume", "--num-processes", "2")
    assert two.returncode == 0, two.stderr[-3000:]
    assert "4 lines already scored" in two.stderr and "matrix" in one.decode()
    assert (tmp_path / "two.jsonl").read_bytes() == one and not (tmp_path / "two.jsonl.partial").exists()


def test_a_bad_line_stops_every_process_with_one_error_line_and_a_resumable_partial(model, responses, tmp_path):
    a, b, _ = responses
    lines = Path(b).read_text().splitlines(keepends=True)
    bad = tmp_path / "b.jsonl"
    bad.write_text("".join(lines[:10]) + "{not json\n" + "".join(lines[11:]))
    done = gpmctl(
        "score", a, str(bad), "-m", model, "--chunk-lines", "2", "-o", str(tmp_path / "p.jsonl"), "--num-processes", "2"
    )
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith(f"gpmctl: error: {bad}:11: invalid JSON"), done.stderr
    assert "Traceback" not in done.stderr
    kept = (tmp_path / "p.jsonl.partial").read_text().splitlines()
    assert [json.loads(line)["line"] for line in kept] == list(range(1, 9))  # the rounds written before line 11 was read


def rmbench_rows(count: int) -> list[dict]:
    """Rows in RM-Bench's total_dataset.json format, over the domains."""
    rng = random.Random(1)
    domains = ("chat", "code", "math", "safety-refuse", "safety-response")
    return [
        {
            "id": i,
            "domain": domains[i % len(domains)],
            "prompt": f"task {i}: {text(rng, 1, 6)}",
            "chosen": [text(rng, 1, 4), text(rng, 4, 9), "# " + text(rng, 4, 9)],
            "rejected": [text(rng, 1, 4), text(rng, 4, 9), "# " + text(rng, 4, 9)],
        }
        for i in range(count)
    ]


def eval_on_one_and_two_processes(args: list[str], tmp_path: Path, title: str) -> dict[str, list[bytes]]:
    """`gpmctl eval *args` in this process ("1") and on two launched processes ("2") -> the bytes of the results
    JSON and the per-example jsonl of each; the launched run prints nothing on stdout and one table (`title`)."""
    files = {}
    for n in ("1", "2"):
        out = ["-o", str(tmp_path / f"eval{n}.json"), "--examples", str(tmp_path / f"eval{n}.jsonl")]
        if n == "1":
            in_process("eval", *args, *out)
        else:
            done = gpmctl("eval", *args, *out, "--num-processes", "2")
            assert done.returncode == 0, done.stderr[-3000:]
            assert done.stdout == "" and done.stderr.count(title) == 1  # process 0 alone prints its table
        result = json.loads((tmp_path / f"eval{n}.json").read_text())
        run = result["gpmctl"]["provenance"]
        assert run.pop("processes") == int(n) and run.pop("wall_s") > 0  # how this run ran: the rest must not differ
        files[n] = [json.dumps(result), (tmp_path / f"eval{n}.jsonl").read_bytes()]
    return files


def test_eval_rmbench_on_two_processes_writes_the_files_of_one_process(model, tmp_path):
    data = tmp_path / "total_dataset.json"
    data.write_text(json.dumps(rmbench_rows(70)))  # two blocks of rows: one per process
    files = eval_on_one_and_two_processes(
        ["rmbench", "-m", model, "--data", str(data), "--batch-size", "7"], tmp_path, "RM-Bench"
    )
    assert files["1"] == files["2"]
    assert len(files["2"][1].splitlines()) == 70 and json.loads(files["2"][0])["domains"]["safety"]["rows"] == 28


def test_eval_rmb_on_two_processes_writes_the_files_of_one_process(model, tmp_path):
    """Best-of-N rows of 3 to 7 candidates (one group each) over two blocks of rows: one per process."""
    rng = random.Random(2)
    for part, goal in (("Pairwise_set", "Helpfulness"), ("BoN_set", "Harmlessness")):
        rows = []
        for i in range(40):
            row = {"conversation_input": [{"role": "user", "content": text(rng, 1, 6), "language": "English"}]}
            if part == "Pairwise_set":
                row.update(chosen={"answer": text(rng, 1, 8)}, reject={"answer": text(rng, 1, 8)})
            else:
                losers = [{"answer": text(rng, 1, 8)} for _ in range(rng.randint(2, 6))]
                row.update(bon_best={"answer": text(rng, 1, 8)}, loser_list=losers)
            rows.append(row)
        (tmp_path / "rmb" / part / goal).mkdir(parents=True)
        (tmp_path / "rmb" / part / goal / "S1.json").write_text(json.dumps(rows))
    files = eval_on_one_and_two_processes(
        ["rmb", "-m", model, "--data", str(tmp_path / "rmb"), "--batch-size", "7"], tmp_path, "RMB"
    )
    assert files["1"] == files["2"]
    assert len(files["2"][1].splitlines()) == 80 and json.loads(files["2"][0])["counts"]["BoN Harmlessness"]["rows"] == 40


def test_eval_cyclic_on_two_processes_writes_the_files_of_one_process(model, tmp_path):
    files = eval_on_one_and_two_processes(
        ["cyclic", "-m", model, "--data", "cyclic:reworded?num_prompts=24", "--batch-size", "7"], tmp_path, "BT ceiling"
    )
    assert files["1"] == files["2"]
    assert len(files["2"][1].splitlines()) == json.loads(files["2"][0])["pairs"] > 20
