"""The command line as a user meets it: fast help, one-line errors with exit code 2, recipes and overrides."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gpmctl.config import is_gpo_recipe, load_gpo_recipe, load_recipe, parse_override, resolve_recipe, shipped_recipes
from gpmctl.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "GPMCTL_DEBUG": ""}


def gpmctl(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gpmctl", *args], capture_output=True, text=True, cwd=cwd, env=ENV, timeout=300)


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_help_lists_the_six_subcommands_without_importing_torch():
    code = (
        "import sys; sys.argv = ['gpmctl', '--help']\n"
        "from gpmctl.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, cwd=ROOT).stdout
    for command in ("data", "train-rm", "train-gpo", "score", "eval", "export"):
        assert command in out
    assert out.strip().endswith("NO-TORCH")


def test_unknown_recipe_key_names_file_key_and_suggestion(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("output_dir: x\nmodel:\n  dimm: 4\ndata:\n  train: t.jsonl\n")
    assert_one_line_error(gpmctl("train-rm", str(recipe)), str(recipe), "model.dimm", "model.dim")


def test_unknown_override_key_is_an_error_naming_the_command_line():
    assert_one_line_error(
        gpmctl("train-rm", "recipes/cyclic_tiny_gpm.yaml", "train.learnig_rate=1"),
        "command-line override 'train.learnig_rate=1'",
        "unknown key train.learnig_rate",
    )


def test_trl_and_openrlhf_names_work_as_overrides_bare_or_sectioned(tmp_path):
    """TRL / transformers and OpenRLHF hyper-parameter names are applied as the gpmctl keys they mean, each
    with a log line; in a recipe file they stay errors whose message names the gpmctl key."""
    names = [
        "learning_rate=3e-4",
        "train.per_device_train_batch_size=4",
        "gradient_accumulation_steps=2",
        "num_train_epochs=3",
        "max_len=256",
        "bf16=true",
        "gradient_checkpointing=true",
        "warmup_ratio=0.1",
        "lora_r=8",
        "train.micro_train_batch_size=4",
    ]
    result = gpmctl("train-rm", "recipes/cyclic_tiny_gpm.yaml", *names, "--print-recipe")
    assert result.returncode == 0, result.stderr
    recipe = yaml.safe_load(result.stdout)
    t, m, d = recipe["train"], recipe["model"], recipe["data"]
    assert (t["lr"], t["batch_size"], t["grad_accum"], t["epochs"], t["precision"], t["warmup_ratio"]) == (
        3e-4,
        4,
        2,
        3,
        "bf16",
        0.1,
    )
    assert (d["max_length"], m["gradient_checkpointing"], m["lora_rank"]) == (256, True, 8)
    assert "override bf16=True is the TRL/OpenRLHF name of train.precision: train.precision=bf16" in result.stderr
    assert result.stderr.count("TRL/OpenRLHF name of") == len(names)
    bad = tmp_path / "r.yaml"
    bad.write_text("base: cyclic_tiny_gpm\ntrain:\n  bf16: true\n")
    assert_one_line_error(gpmctl("train-rm", str(bad)), f"{bad}: unknown key train.bf16", "write train.precision: bf16")


def test_openrlhf_key_options_are_data_keys_bare_or_sectioned(tmp_path):
    result = gpmctl(
        "train-rm", "cyclic_tiny_gpm", "prompt_key=question", "chosen_key=good", "data.rejected_key=bad", "--print-recipe"
    )
    assert result.returncode == 0, result.stderr
    d = yaml.safe_load(result.stdout)["data"]
    assert (d["prompt_key"], d["chosen_key"], d["rejected_key"]) == ("question", "good", "bad")
    assert "override prompt_key=question is the TRL/OpenRLHF name of data.prompt_key" in result.stderr
    assert_one_line_error(
        gpmctl("train-rm", "cyclic_tiny_gpm", "data.prompt_key=text", "data.chosen_key=text"), "must name different input keys"
    )


def test_wrong_type_and_bad_yaml_are_errors(tmp_path):
    assert_one_line_error(
        gpmctl("train-rm", "recipes/cyclic_tiny_gpm.yaml", "train.batch_size=many"), "train.batch_size", "integer"
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    assert_one_line_error(gpmctl("train-rm", str(bad)), str(bad), "YAML")


def test_missing_data_file_is_an_error(tmp_path):
    result = gpmctl("train-rm", "recipes/cyclic_tiny_gpm.yaml", f"output_dir={tmp_path}/o", "data.train=/nowhere/pairs.jsonl")
    assert_one_line_error(result, "/nowhere/pairs.jsonl")


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    data = tmp_path / "pairs.jsonl"
    good = '{"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."}\n'
    data.write_text(good * 3 + '{"prompt": "Hi", "chosen": "Hello!", "rejected": \n' + good)
    result = gpmctl(
        "train-rm", "recipes/cyclic_tiny_gpm.yaml", f"output_dir={tmp_path}/o", f"data.train={data}", "data.eval=null"
    )
    assert_one_line_error(result, f"{data}:4")
    assert not (tmp_path / "o" / "model.safetensors").exists()


def test_missing_recipe_suggests_a_shipped_one():
    assert_one_line_error(gpmctl("train-rm", "cyclic_tiny_gmp"), "cyclic_tiny_gpm")


def test_print_recipe_resolves_shipped_names_and_overrides():
    result = gpmctl("train-rm", "cyclic_tiny_bt", "train.lr=0.01", "--print-recipe")
    assert result.returncode == 0, result.stderr
    assert "lr: 0.01" in result.stdout and "kind: bt" in result.stdout


def test_overrides_are_typed_by_the_recipe_schema():
    recipe = load_recipe(
        "recipes/cyclic_tiny_gpm.yaml",
        ["model.dim=4", "model.gate=true", "train.lr=2e-6", "train.adam_betas=[0.9, 0.99]", "data.eval=null"],
    )
    assert recipe.model.dim == 4 and recipe.model.gate is True and recipe.train.lr == 2e-6
    assert recipe.train.adam_betas == (0.9, 0.99) and recipe.data.eval is None
    assert parse_override("data.train=a=b.jsonl") == ("data.train", "a=b.jsonl")


@pytest.mark.parametrize(
    "override,message",
    [
        ("model.dim=3", "even"),
        ("model.kind=rm", "gpm, bt"),
        ("model.gate=yes please", "true or false"),
        ("model.kind=bt", None),
        ("train.adam_betas=[0.9]", "2 values"),
        ("nonsense", "key.path=value"),
    ],
)
def test_invalid_values_are_rejected(override, message):
    if message is None:
        assert load_recipe("recipes/cyclic_tiny_gpm.yaml", [override, "model.gate=false"]).model.kind == "bt"
        with pytest.raises(ConfigError, match="gate needs a GPM"):
            load_recipe("recipes/cyclic_tiny_gpm.yaml", [override, "model.gate=true"])
        return
    with pytest.raises(ConfigError, match=message):
        load_recipe("recipes/cyclic_tiny_gpm.yaml", [override])


def test_tau_defaults_follow_the_paper():
    assert load_recipe(None, ["data.train=x"]).model.resolved_tau() == 0.1
    assert load_recipe(None, ["data.train=x", "model.kind=bt"]).model.resolved_tau() == 1.0


def test_every_shipped_recipe_loads():
    names = shipped_recipes()
    assert {"cyclic_tiny_gpm", "cyclic_tiny_bt"} <= set(names)
    for name in names:
        path = resolve_recipe(name)
        (load_gpo_recipe if is_gpo_recipe(path) else load_recipe)(path)  # gpo_*.yaml: the train-gpo schema


def test_data_cyclic_writes_files_and_reports_the_bt_ceiling(tmp_path):
    import json

    result = gpmctl("data", "cyclic", str(tmp_path), "--seed", "3", "--num-prompts", "20")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert Path(summary["train"]).is_file() and Path(summary["reworded"]).is_file()
    assert summary["bt_ceiling_reworded"] == pytest.approx(2 / 3, abs=1e-4)


# ----------------------------------------------------------------------------------------------------
# Help, completion and pipes: the habits a shell user expects.


def every_command() -> list[list[str]]:
    """The argv prefix of every command and group (`[]` for gpmctl itself, ["data", "cyclic"], ...)."""
    import typer.main

    from gpmctl.cli import app

    def walk(command, path):
        yield path
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            yield from walk(sub, [*path, name])

    return list(walk(typer.main.get_command(app), []))


def test_help_of_every_command_shows_no_bool_type_and_no_path_of_this_project():
    from tests.shell import run

    internal = re.compile(r"/work/|\btests/|\.venv|\bgpmctl/|\brecipes/|\.\./|\bshared/|/home/|/root/")
    commands = every_command()
    assert len(commands) > 20 and ["data", "cyclic"] in commands
    for path in commands:
        result = run(*path, "--help", env={"COLUMNS": "250"})
        assert result.returncode == 0, (path, result.stderr)
        assert "--help" in result.stdout, path
        assert "<bool>" not in result.stdout and "BOOLEAN" not in result.stdout, (path, result.stdout)
        assert not internal.search(result.stdout), (path, internal.search(result.stdout).group(), result.stdout)


def test_a_flag_still_parses_and_takes_no_value(tmp_path):
    from tests.shell import run

    dumped = run("train-rm", "cyclic_tiny_gpm", "--print-recipe")
    assert dumped.returncode == 0 and yaml.safe_load(dumped.stdout)["model"]["kind"] == "gpm"
    assert_one_line_error(gpmctl("train-rm", "cyclic_tiny_gpm", "--print-recipe=yes"), "--print-recipe")


def under_bash(*args: str, home: Path) -> subprocess.CompletedProcess:
    """`gpmctl *args` as a child of bash (not exec'd by it: `; exit`), so that Typer's shell detection finds bash;
    HOME is `home`, so an installation never reaches the user's own shell files."""
    script = '"$0" -m gpmctl "$@"; exit $?'
    env = {**ENV, "HOME": str(home)}
    return subprocess.run(["bash", "-c", script, sys.executable, *args], capture_output=True, text=True, cwd=ROOT, env=env)


def test_show_completion_prints_a_bash_script_and_install_completion_writes_only_under_home(tmp_path):
    shown = under_bash("--show-completion", home=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "_GPMCTL_COMPLETE" in shown.stdout and "complete " in shown.stdout
    assert list(tmp_path.iterdir()) == []  # showing writes nothing
    installed = under_bash("--install-completion", home=tmp_path)
    assert installed.returncode == 0, installed.stderr
    script = tmp_path / ".bash_completions" / "gpmctl.sh"
    assert script.read_text().strip() == shown.stdout.strip()
    assert f"source '{script}'" in (tmp_path / ".bashrc").read_text()


def test_completion_answers_with_the_command_names():
    env = {**ENV, "_GPMCTL_COMPLETE": "complete_bash", "COMP_WORDS": "gpmctl tr", "COMP_CWORD": "1"}
    done = subprocess.run([sys.executable, "-m", "gpmctl"], capture_output=True, text=True, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["train-rm", "train-gpo"]


def read_first_line_then_close(*args: str, stdin: Path | None = None) -> tuple[str, int, str]:
    """`gpmctl *args | head -1`: the first line of stdout, then the reader goes away. -> (line, exit code, stderr)."""
    with open(stdin or os.devnull, "rb") as source:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gpmctl", *args],
            stdin=source,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            env=ENV,
        )
        line = proc.stdout.readline().decode()
        proc.stdout.close()
        err = proc.stderr.read().decode()
        return line, proc.wait(timeout=300), err


def test_a_reader_that_goes_away_ends_the_command_quietly_with_141(tmp_path):
    made = gpmctl("data", "cyclic", str(tmp_path), "--num-prompts", "300")
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "train.jsonl").stat().st_size > 200_000  # more than a pipe holds: the writer must hit the closed pipe
    line, code, err = read_first_line_then_close("data", "convert", "-", "-", stdin=tmp_path / "train.jsonl")
    assert json.loads(line)["prompt"]
    assert code == 141, err
    assert err == "", err
