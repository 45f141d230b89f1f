"""Multi-process training on this CPU machine: profiles, the launch rules, DDP / ZeRO-2 / ZeRO-3 through
the same `gpmctl train-rm` users run (2 processes on gloo), preemption and resume, world-size checks.

The 2-process runs re-execute gpmctl under `accelerate launch`, ~25-35 s each on 2 cores (mostly imports).
Their final weights are compared with a single-process run of the same global batch: the only difference
is the order of the fp32 sums (two half-batch gradient means averaged vs one full-batch mean), so the
tolerance is 1e-5 absolute on every tensor (measured: <= 6e-7 after 100 steps).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from gpmctl.config import LaunchConfig, load_recipe, shipped_recipes
from gpmctl.engine import Engine
from gpmctl.engine.launch import plan_launch, shipped_profiles
from gpmctl.errors import ConfigError, GpmctlError
from gpmctl.train.reward import Preempted, train_reward_model

REPO = Path(__file__).resolve().parent.parent
SMALL = [
    "data.train=cyclic:train?num_prompts=24",
    "data.eval=cyclic:test?num_prompts=24",
    "model.tiny.hidden_size=32",
    "model.tiny.intermediate_size=64",
    "model.tiny.num_layers=1",
    "train.epochs=2",
    "train.logging_steps=2",
    "train.keep_best=true",
    "train.eval_steps=40",
]
TOLERANCE = 1e-5


def gpmctl(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    return subprocess.run(
        [sys.executable, "-m", "gpmctl", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def two_process_run(out: Path, profile: str, *extra: str) -> Path:
    if profile.startswith("zero"):
        pytest.importorskip("deepspeed", reason="the ZeRO profiles need the deepspeed extra")
    done = gpmctl(
        "train-rm",
        "recipes/cyclic_tiny_gpm.yaml",
        f"output_dir={out}",
        *SMALL,
        "train.batch_size=4",
        f"launch.profile={profile}",
        "launch.num_processes=2",
        *extra,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def assert_same_weights(a_dir: Path, b_dir: Path, atol: float) -> None:
    a, b = load_file(a_dir / "model.safetensors"), load_file(b_dir / "model.safetensors")
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= atol, f"max |difference| {worst:.3g} > {atol}"


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    """The reference: one process, batch 8 = 2 processes x 4."""
    out = tmp_path_factory.mktemp("single") / "run"
    train_reward_model(load_recipe("recipes/cyclic_tiny_gpm.yaml", [f"output_dir={out}", *SMALL, "train.batch_size=8"]))
    return out


@pytest.fixture(scope="module")
def zero3(tmp_path_factory) -> Path:
    return two_process_run(tmp_path_factory.mktemp("zero3") / "run", "zero3")


# ----------------------------------------------------------------------------------------------------
# Profiles, recipes, the launch rules: no training.


def test_shipped_profiles_are_accelerate_configs_of_the_named_engine():
    from accelerate.commands.config.config_args import load_config_from_file

    profiles = shipped_profiles()
    assert {"single", "ddp", "zero2", "zero3", "zero3_offload"} <= set(profiles)
    engines = {name: str(load_config_from_file(str(path)).distributed_type) for name, path in profiles.items()}
    assert engines["single"].endswith("NO") and engines["ddp"].endswith("MULTI_GPU")
    assert all(engines[n].endswith("DEEPSPEED") for n in ("zero2", "zero3", "zero3_offload"))


def test_recipes_ls_lists_recipes_and_profiles_and_cp_copies_without_clobbering(tmp_path):
    from gpmctl.cli import app

    runner = CliRunner()
    listed = runner.invoke(app, ["recipes", "ls", "--format", "json"])
    assert listed.exit_code == 0, listed.output
    rows = {r["name"]: r["kind"] for r in json.loads(listed.stdout)}
    assert rows["gpm_8b"] == "recipe" and rows["zero3"] == "profile" and rows["cyclic_tiny_gpm"] == "recipe"
    assert runner.invoke(app, ["recipes", "cp", "gpm_8b", str(tmp_path)]).exit_code == 0
    assert (tmp_path / "gpm_8b.yaml").read_text() == shipped_recipes()["gpm_8b"].read_text()
    assert runner.invoke(app, ["recipes", "cp", "zero3", str(tmp_path / "z.yaml")]).exit_code == 0
    clobber = runner.invoke(app, ["recipes", "cp", "zero3", str(tmp_path / "z.yaml")])
    assert isinstance(clobber.exception, GpmctlError) and "--force" in str(clobber.exception)
    typo = runner.invoke(app, ["recipes", "cp", "zero4", str(tmp_path)])
    assert isinstance(typo.exception, GpmctlError) and "did you mean zero3" in str(typo.exception)


def test_every_shipped_recipe_loads_and_overlays_merge_onto_their_base():
    for name, path in shipped_recipes().items():
        if not name.startswith("gpo_"):  # GPO recipes have their own schema
            load_recipe(path)
    overlay = load_recipe(shipped_recipes()["ablation_gpm_2b_no_gate_l2"])
    assert (overlay.model.gate, overlay.model.l2, overlay.model.dim, overlay.model.backbone) == (
        False,
        True,
        8,
        "google/gemma-2b-it",
    )
    assert overlay.output_dir == "runs/gpm_2b_no_gate_l2" and overlay.launch.profile == "zero3"
    bt = load_recipe(shipped_recipes()["bt_8b"])
    assert bt.model.kind == "bt" and bt.model.resolved_tau() == 1.0 and bt.train.lr == 2e-6


def test_paper_recipe_dry_run_prints_launch_world_size_global_batch_and_memory():
    from gpmctl.cli import app

    done = CliRunner().invoke(app, ["train-rm", "gpm_8b", "--dry-run"])
    assert done.exit_code == 0, done.output
    report = json.loads(done.stdout)
    assert report["world_size"] == 8 and report["global_batch"] == 32 and report["engine"] == "DEEPSPEED"
    assert "accelerate.commands.launch" in report["launch"] and "zero3.yaml" in report["launch"]
    assert 10 < report["model_states_gib_per_gpu"] < 20  # 8.03e9 x 16 B / 8 GPUs = 15 GiB


ARGV = ["train-rm", "r.yaml"]


@pytest.mark.parametrize(
    "launch,env,expect",
    [
        (LaunchConfig(), {}, "in place"),
        (LaunchConfig(profile="ddp", num_processes=8), {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "3"}, "in place"),
        (LaunchConfig(profile="ddp", num_processes=2), {}, "relaunch"),
        (LaunchConfig(profile="zero3", num_processes=1), {}, "relaunch"),  # DeepSpeed needs a launcher even for 1
        (LaunchConfig(profile="ddp", num_processes=2), {"ACCELERATE_USE_CPU": "1"}, "relaunch"),  # not a launcher
        (
            LaunchConfig(profile="zero3", num_processes=16, num_machines=2),
            {
                "SLURM_JOB_ID": "7",
                "SLURM_STEP_NUM_TASKS": "2",
                "SLURM_STEP_NUM_NODES": "2",
                "SLURM_NODEID": "1",
                "MASTER_ADDR": "n1",
            },
            "relaunch",
        ),
        (
            LaunchConfig(profile="zero3", num_processes=16, num_machines=2),
            {"SLURM_JOB_ID": "7", "SLURM_STEP_NUM_TASKS": "16", "SLURM_STEP_NUM_NODES": "2", "MASTER_ADDR": "n1"},
            "one gpmctl per node",
        ),
        (
            LaunchConfig(profile="zero3", num_processes=8, num_machines=1),
            {"SLURM_JOB_ID": "7", "SLURM_STEP_NUM_TASKS": "2", "SLURM_STEP_NUM_NODES": "2", "MASTER_ADDR": "n1"},
            "launch.num_machines=2",
        ),
        (LaunchConfig(profile="zero3", num_processes=16, num_machines=2), {}, "its own launcher"),
    ],
)
def test_launch_rules(launch, env, expect):
    if expect not in ("in place", "relaunch"):
        with pytest.raises(ConfigError, match=expect):
            plan_launch(launch, ARGV, env, cuda=False)
        return
    plan = plan_launch(launch, ARGV, env, cuda=False)
    if expect == "in place":
        assert plan.command is None
        return
    cmd = plan.command
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"] and cmd[-4:] == ["-m", "gpmctl", *ARGV]
    assert cmd[cmd.index("--num_processes") + 1] == str(launch.num_processes)
    assert cmd[cmd.index("--config_file") + 1].endswith(f"{launch.profile}.yaml")
    assert plan.env["DS_ACCELERATOR"] == "cpu" and ("ACCELERATE_USE_CPU" in plan.env) == (launch.profile == "ddp")
    if "SLURM_NODEID" in env:
        assert cmd[cmd.index("--machine_rank") + 1] == "1" and cmd[cmd.index("--main_process_ip") + 1] == "n1"
        assert cmd[cmd.index("--num_machines") + 1] == "2"


# ----------------------------------------------------------------------------------------------------
# Resuming with another layout.

LAYOUT = {"world_size": 2, "engine": "torch", "zero_stage": None, "batch_size": 4, "grad_accum": 1}


@pytest.mark.parametrize(
    "now,problem",
    [
        ({"world_size": 1, "batch_size": 8}, None),  # same global batch 8: the same pairs make each step
        ({"world_size": 4, "batch_size": 1, "grad_accum": 2}, None),
        ({"world_size": 4}, "global batch of 8 pairs"),
        ({"engine": "deepspeed", "zero_stage": 3}, "DeepSpeed ZeRO-3"),
    ],
)
def test_resume_layout_checks(now, problem):
    current = {**LAYOUT, **now}
    if problem is None:
        Engine.check_resumable(LAYOUT, current, Path("ckpt"))
    else:
        with pytest.raises(ConfigError, match=problem):
            Engine.check_resumable(LAYOUT, current, Path("ckpt"))
    zero = {**LAYOUT, "engine": "deepspeed", "zero_stage": 3}
    with pytest.raises(ConfigError, match="written by 2 processes cannot be resumed by 1"):
        Engine.check_resumable(zero, {**zero, "world_size": 1, "batch_size": 8}, Path("ckpt"))


def test_resuming_with_another_global_batch_is_one_clear_error(tmp_path):
    overrides = [f"output_dir={tmp_path / 'run'}", *SMALL, "train.batch_size=8", "train.keep_best=false"]
    with pytest.raises(Preempted):
        train_reward_model(load_recipe("recipes/cyclic_tiny_gpm.yaml", overrides), stop_after_steps=2)
    with pytest.raises(ConfigError, match="global batch of 8 pairs"):
        train_reward_model(load_recipe("recipes/cyclic_tiny_gpm.yaml", [*overrides, "train.batch_size=4"]), resume="auto")


# ----------------------------------------------------------------------------------------------------
# Two processes on gloo, through `gpmctl train-rm` re-executing itself under accelerate launch.


def test_ddp_two_processes_end_with_the_weights_of_one_process(tmp_path, single):
    out = two_process_run(tmp_path / "ddp", "ddp")
    env = json.loads((out / "environment.json").read_text())
    assert env["num_processes"] == 2 and env["distributed_type"] == "DistributedType.MULTI_CPU"
    assert not list(out.glob("*.tmp"))
    assert_same_weights(single, out, TOLERANCE)


def test_zero2_two_processes_end_with_the_weights_of_one_process(tmp_path, single):
    out = two_process_run(tmp_path / "zero2", "zero2")
    assert json.loads((out / "environment.json").read_text())["distributed_type"] == "DistributedType.DEEPSPEED"
    assert_same_weights(single, out, TOLERANCE)


def test_zero3_gathers_the_full_model_which_loads_and_scores_as_in_training(zero3, single):
    from gpmctl.data.tokenize import SequenceEncoder, collate_pairs
    from gpmctl.models.io import load_model
    from gpmctl.models.sources import load_tokenizer
    from gpmctl.train.reward import load_pairs, pair_loss, pair_metrics

    assert_same_weights(single, zero3, TOLERANCE)
    assert (zero3 / "best" / "model.safetensors").is_file()  # keep-best saved from the shards too
    recipe = load_recipe(zero3 / "recipe.yaml")
    model, tokenizer = load_model(zero3, dtype="float32"), load_tokenizer(str(zero3))
    encoder = SequenceEncoder(
        tokenizer, recipe.data.max_length, recipe.model.resolved_eos(), recipe.model.gate_prompt, recipe.data.truncation
    )
    _, held = load_pairs(recipe, encoder)
    with torch.no_grad():
        _, scores = pair_loss(model.eval(), collate_pairs(held, tokenizer.pad_token_id), recipe.model.resolved_tau(), False)
    trained = json.loads((zero3 / "metrics.json").read_text())["model_eval"]
    rescored = pair_metrics(scores, recipe.model.resolved_tau())
    assert rescored["accuracy"] == trained["accuracy"] and rescored["loss"] == pytest.approx(trained["loss"], abs=1e-5)


@pytest.mark.slow  # two 2-process launches, ~50 s
def test_sigterm_mid_run_checkpoints_exits_75_and_resume_auto_ends_with_the_same_weights(tmp_path, zero3):
    out = tmp_path / "cut"
    args = [
        "train-rm",
        "recipes/cyclic_tiny_gpm.yaml",
        f"output_dir={out}",
        *SMALL,
        "train.batch_size=4",
        "launch.profile=zero3",
        "launch.num_processes=2",
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    proc = subprocess.Popen([sys.executable, "-m", "gpmctl", *args], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while not ((out / "log.jsonl").is_file() and '"train"' in (out / "log.jsonl").read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it trained"
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)  # to the parent, which passes it on to both workers
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 75, stderr[-3000:]
    (cut,) = (out / "checkpoints").iterdir()
    assert (cut / "engine").is_dir() and json.loads((cut / "trainer_state.json").read_text())["world_size"] == 2
    resumed = gpmctl(*args, "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_weights(zero3, out, 0.0)


# ----------------------------------------------------------------------------------------------------
# Your own accelerate config: a profile file, or the default one `accelerate config` saved.

CYCLIC = "recipes/cyclic_tiny_gpm.yaml"


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """HOME in tmp_path and no HF_HOME / XDG_CACHE_HOME: the user's own default accelerate config is never read."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HF_HOME", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    return tmp_path / "home"


def accelerate_config(path: Path, **values) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"compute_environment": "LOCAL_MACHINE", "machine_rank": 0, **values}))
    return path


def test_an_accelerate_config_file_as_profile_is_honoured_whole_below_the_layer_that_named_it(home, tmp_path):
    own = accelerate_config(
        tmp_path / "mine.yaml",
        distributed_type="MULTI_GPU",
        num_processes=3,
        num_machines=1,
        mixed_precision="bf16",
        main_process_port=29555,
    )
    recipe = load_recipe(CYCLIC, [f"launch.profile={own}"])
    assert (recipe.launch.num_processes, recipe.launch.main_process_port, recipe.train.precision) == (3, 29555, "bf16")
    assert recipe.launch_from["launch.num_processes"] == recipe.launch_from["train.precision"] == f"profile file {own}"
    cmd = plan_launch(recipe.launch, ARGV, {}, cuda=False).command
    assert cmd[cmd.index("--config_file") + 1] == str(own) and cmd[cmd.index("--num_processes") + 1] == "3"
    assert cmd[cmd.index("--main_process_port") + 1] == "29555"
    # the command line wins over the profile it names; the recipe file (gpm_8b: 8 processes) does not
    mine = load_recipe(shipped_recipes()["gpm_8b"], [f"launch.profile={own}", "launch.num_machines=1", "train.precision=fp32"])
    assert (mine.launch.num_processes, mine.train.precision) == (3, "fp32")
    assert (
        mine.launch_from["train.precision"] == "command line"
        and mine.launch_from["launch.num_processes"] == f"profile file {own}"
    )
    named_in_recipe = tmp_path / "r.yaml"
    named_in_recipe.write_text(f"base: cyclic_tiny_gpm\nlaunch:\n  profile: {own}\n  num_processes: 2\n")
    assert load_recipe(named_in_recipe).launch.num_processes == 2  # the recipe that names the profile overrides it


def test_the_default_accelerate_config_is_used_when_the_recipe_names_no_profile(home, tmp_path, monkeypatch):
    assert load_recipe(CYCLIC).launch.profile == "single"  # `accelerate config` never ran here
    default = accelerate_config(
        home / ".cache" / "huggingface" / "accelerate" / "default_config.yaml",
        distributed_type="MULTI_GPU",
        num_processes=2,
        mixed_precision="no",
    )
    recipe = load_recipe(CYCLIC)
    assert (recipe.launch.profile, recipe.launch.num_processes, recipe.train.precision) == (str(default), 2, "fp32")
    assert recipe.launch_from["launch.profile"] == f"default accelerate config {default}"
    assert load_recipe(CYCLIC, ["launch.num_processes=1"]).launch.num_processes == 1  # every value set wins over it
    assert load_recipe(shipped_recipes()["gpm_8b"]).launch.profile == "zero3"  # a recipe that names a profile keeps it
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # where accelerate looks when HF_HOME is set
    assert load_recipe(CYCLIC).launch.profile == "single"
    moved = accelerate_config(tmp_path / "hf" / "accelerate" / "default_config.yaml", distributed_type="NO", num_processes=1)
    assert load_recipe(CYCLIC).launch.profile == str(moved)


def test_dry_run_shows_where_each_launch_setting_came_from(home, tmp_path):
    from gpmctl.cli import app

    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": "auto"}))
    own = accelerate_config(
        tmp_path / "ds_accelerate.yaml",
        distributed_type="DEEPSPEED",
        deepspeed_config={"deepspeed_config_file": str(ds)},
        num_processes=4,
        mixed_precision="bf16",
    )
    done = CliRunner().invoke(app, ["train-rm", "gpm_8b", f"launch.profile={own}", "launch.num_machines=1", "--dry-run"])
    assert done.exit_code == 0, done.output
    report = json.loads(done.stdout)
    settings = {key: (s["value"], s["from"]) for key, s in report["settings"].items()}
    assert settings["launch.profile"] == (str(own), "command line")
    assert settings["launch.num_processes"] == (4, f"profile file {own}")
    assert settings["launch.num_machines"] == (1, "command line")
    assert settings["train.precision"] == ("bf16", f"profile file {own}")
    assert settings["engine"] == ("DEEPSPEED ZeRO-2", f"profile file {own}")
    assert report["world_size"] == 4 and f"--config_file {own}" in report["launch"]
    # ZeRO-2 over 4 GPUs: bf16 weights whole (2 B), gradients and AdamW state sharded ((2 + 12) B / 4)
    assert report["model_states_gib_per_gpu"] == pytest.approx(report["parameters"] * (2 + 14 / 4) / 2**30, abs=0.01)
