"""The hard shell of model loading and `gpmctl export`: a broken model folder is one line and exit 2,
naming the file and key, before any weight is read (never a randomly initialised backbone that scores
with rc 0, never an unpickled file); an export never destroys a run, its source or an older export.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from gpmctl.config import load_recipe
from gpmctl.models.export import export_model
from gpmctl.models.io import load_model
from gpmctl.models.sources import load_tokenizer
from gpmctl.train.reward import train_reward_model
from tests.shell import assert_one_line_error, run, snapshot

PAIRS = [
    {"prompt": "Which option suits a garden best?", "chosen": "Go with jade, it is calm.", "rejected": "Pick silver."},
    {"prompt": "Name a warm colour.", "chosen": "Amber.", "rejected": "I would say ice blue."},
]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """Good folders of every layout the loader reads, built in seconds: a train-rm run folder (tiny gated
    GPM, 2 steps), its sharded export, the same weights in the released layout, and scoring inputs."""
    root = tmp_path_factory.mktemp("shell_export")
    recipe = load_recipe(
        "recipes/cyclic_tiny_gpm.yaml",
        [
            f"output_dir={root / 'run'}",
            "data.train=cyclic:train?num_prompts=10",
            "data.eval=null",
            "train.max_steps=2",
            "train.batch_size=4",
            "model.tiny.num_layers=1",
            "model.gate=true",
        ],
    )
    run_dir = train_reward_model(recipe).output_dir
    sharded = export_model(run_dir, root / "sharded", max_shard_size="100KB")
    released = root / "released"  # the paper's checkpoints: no head settings file, the causal-LM head kept
    released.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(run_dir / name, released / name)
    state = load_file(run_dir / "model.safetensors")
    state["lm_head.weight"] = torch.randn(state["model.embed_tokens.weight"].shape)
    save_file(state, released / "model.safetensors", metadata={"format": "pt"})
    a, b, data = root / "a.jsonl", root / "b.jsonl", root / "pairs.jsonl"
    a.write_text("".join(json.dumps({"prompt": p["prompt"], "response": p["chosen"]}) + "\n" for p in PAIRS))
    b.write_text("".join(json.dumps({"prompt": p["prompt"], "response": p["rejected"]}) + "\n" for p in PAIRS))
    data.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    return SimpleNamespace(run=run_dir, sharded=sharded, released=released, a=a, b=b, data=data)


@pytest.fixture(autouse=True)
def no_unpickling(monkeypatch):
    """Every test here fails if anything reaches for torch.load (a pickle)."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"torch.load was called on {args[:1]}")

    monkeypatch.setattr(torch, "load", refuse)


# ----------------------------------------------------------------------------------------------------
# Broken model folders: each case copies a good folder and breaks one thing


def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def edit_tensors(path: Path, change) -> None:
    """Rewrite one safetensors file with `change(state)` applied."""
    state = load_file(path)
    change(state)
    save_file(state, path, metadata={"format": "pt"})


def in_weights(change):
    return lambda d: edit_tensors(d / "model.safetensors", change)


def set_tensor(name: str, tensor: torch.Tensor):
    return in_weights(lambda state: state.update({name: tensor}))


def head_json(**changes):
    return lambda d: edit_json(d / "preference_head.json", **changes)


def config_json(**changes):
    return lambda d: edit_json(d / "config.json", **changes)


def shard_of(folder: Path, tensor: str) -> Path:
    return folder / json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"][tensor]


def heads_only(state):
    for name in [n for n in state if not n.endswith("_head.weight")]:
        del state[name]


def backbone_in_bin(d: Path) -> None:
    state = load_file(d / "model.safetensors")
    torch.save({k: v for k, v in state.items() if not k.endswith("_head.weight")}, d / "pytorch_model.bin")
    in_weights(heads_only)(d)


def pickles_only(name: str):
    def breaks(d: Path) -> None:
        torch.save(load_file(d / "model.safetensors"), d / name)
        (d / "model.safetensors").unlink()

    return breaks


def truncated(d: Path) -> None:
    weights = d / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])


def unindexed_shards(d: Path) -> None:
    (d / "model.safetensors.index.json").unlink()


def stale_single_file(d: Path) -> None:
    shutil.copy(shard_of(d, "value_head.weight"), d / "model.safetensors")


def shard_missing(d: Path) -> None:
    shard_of(d, "model.norm.weight").unlink()


def shard_lacks_tensor(d: Path) -> None:
    edit_tensors(shard_of(d, "model.norm.weight"), lambda s: s.pop("model.norm.weight"))


def index_escapes(d: Path) -> None:
    index = d / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    data["weight_map"]["model.norm.weight"] = "../model.safetensors"
    index.write_text(json.dumps(data))


def custom_code(file: str, **changes):
    """A config that asks for the folder's own Python code (trust_remote_code), which must never run."""

    def breaks(d: Path) -> None:
        edit_json(d / file, **changes)
        (d / "evil.py").write_text(f"open({str(d / 'RAN')!r}, 'w').write('ran')\n")

    return breaks


# fmt: off
BAD_FOLDERS = [
    # (good folder, how it breaks, what the one error line must name; {d} is the broken folder)
    pytest.param("run", in_weights(heads_only), ["{d}", "lack 11 tensors", "model.embed_tokens.weight"], id="run-backbone-missing"),
    pytest.param("run", backbone_in_bin, ["{d}", "lack 11 tensors", "pytorch_model.bin"], id="run-backbone-only-in-bin"),
    pytest.param("run", pickles_only("pytorch_model.bin"), ["{d}", "pytorch_model.bin", "convert it to safetensors"], id="pickle-bin-only"),
    pytest.param("run", pickles_only("model.pt"), ["{d}", "model.pt", "never unpickles"], id="pickle-pt-only"),
    pytest.param("run", pickles_only("model.ckpt"), ["{d}", "model.ckpt", "never unpickles"], id="pickle-ckpt-only"),
    pytest.param("run", set_tensor("model.layers.7.mlp.extra.weight", torch.zeros(3)), ["{d}", "1 unexpected tensor (model.layers.7.mlp.extra.weight)"], id="run-unexpected-tensor"),
    pytest.param("run", set_tensor("model.norm.weight", torch.ones(3)), ["{d}/model.safetensors", "model.norm.weight has shape [3], config.json implies [64]"], id="run-backbone-shape"),
    pytest.param("run", head_json(dim=4), ["{d}/model.safetensors", "value_head.weight has shape [8, 64], preference_head.json implies [4, 64]"], id="head-dim-mismatch"),
    pytest.param("run", head_json(gate=False), ["{d}", "unexpected tensor (prompt_head.weight)"], id="head-says-no-gate"),
    pytest.param("run", in_weights(lambda s: s.pop("prompt_head.weight")), ["{d}", "lack 1 tensor (prompt_head.weight)"], id="gate-tensor-missing"),
    pytest.param("run", truncated, ["{d}/model.safetensors", "truncated or corrupt"], id="truncated-safetensors"),
    pytest.param("run", lambda d: (d / "model.safetensors").write_text("version https://git-lfs.github.com/spec/v1\n"), ["{d}/model.safetensors", "not a readable safetensors file"], id="lfs-pointer-safetensors"),
    pytest.param("run", lambda d: (d / "config.json").unlink(), ["{d}", "no config.json"], id="no-config"),
    pytest.param("run", lambda d: (d / "config.json").write_text('{"model_type": "llama",\n  oops}'), ["{d}/config.json", "not JSON", "line 2"], id="config-not-json"),
    pytest.param("run", config_json(model_type="no_such_arch"), ["{d}/config.json", "no_such_arch"], id="config-unknown-type"),
    pytest.param("run", config_json(hidden_size="big"), ["{d}/config.json", "hidden_size", "'big'"], id="config-field-type"),
    pytest.param("run", custom_code("config.json", model_type="evil", auto_map={"AutoConfig": "evil.C", "AutoModel": "evil.M"}), ["{d}/config.json", "custom code"], id="config-remote-code-refused"),
    pytest.param("run", custom_code("tokenizer_config.json", tokenizer_class="T", auto_map={"AutoTokenizer": ["evil.T", "evil.T"]}), ["{d}", "tokenizer", "custom code"], id="tokenizer-remote-code-refused"),
    pytest.param("run", lambda d: (d / "preference_head.json").write_text("{kind: gpm"), ["{d}/preference_head.json", "not JSON", "line 1"], id="head-not-json"),
    pytest.param("run", lambda d: (d / "preference_head.json").write_text("[1, 2]"), ["{d}/preference_head.json", "format"], id="head-not-object"),
    pytest.param("run", head_json(format="other"), ["{d}/preference_head.json", "format"], id="head-wrong-format"),
    pytest.param("run", head_json(tau=-1), ["{d}/preference_head.json", "tau", "-1"], id="head-tau-negative"),
    pytest.param("run", head_json(tau=0), ["{d}/preference_head.json", "tau"], id="head-tau-zero"),
    pytest.param("run", head_json(tau=float("nan")), ["{d}/preference_head.json", "tau", "nan"], id="head-tau-nan"),
    pytest.param("run", head_json(tau="0.1"), ["{d}/preference_head.json", "tau"], id="head-tau-string"),
    pytest.param("run", head_json(dim=7), ["{d}/preference_head.json", "dim", "7"], id="head-dim-odd"),
    pytest.param("run", head_json(kind="rank"), ["{d}/preference_head.json", "kind", "'rank'"], id="head-unknown-kind"),
    pytest.param("run", head_json(pool="mean"), ["{d}/preference_head.json", "pool", "'mean'"], id="head-unknown-pool"),
    pytest.param("run", head_json(gate="yes"), ["{d}/preference_head.json", "gate", "true or false"], id="head-gate-not-bool"),
    pytest.param("sharded", shard_missing, ["{d}/model.safetensors.index.json", "weight_map", "is not in the folder"], id="sharded-shard-file-missing"),
    pytest.param("sharded", shard_lacks_tensor, ["{d}/model-0", "lacks 1 tensor (model.norm.weight)", "index.json"], id="sharded-shard-lacks-tensor"),
    pytest.param("sharded", unindexed_shards, ["{d}", "no model.safetensors.index.json"], id="sharded-no-index"),
    pytest.param("sharded", lambda d: (d / "model.safetensors.index.json").write_text("{"), ["{d}/model.safetensors.index.json", "not JSON"], id="sharded-index-not-json"),
    pytest.param("sharded", index_escapes, ["{d}/model.safetensors.index.json", "weight_map"], id="sharded-index-path-escapes"),
    pytest.param("sharded", stale_single_file, ["{d}", "both model.safetensors and model.safetensors.index.json"], id="sharded-stale-single-file"),
    pytest.param("released", in_weights(lambda s: s.pop("value_head.weight")), ["{d}", "not a preference model", "value_head.weight"], id="released-no-head-at-all"),
    pytest.param("released", in_weights(heads_only), ["{d}", "lack 11 tensors"], id="released-backbone-missing"),
    pytest.param("released", set_tensor("prompt_head.weight", torch.zeros(3, 64)), ["{d}", "prompt_head.weight has 3 rows, expected 4"], id="released-gate-rows"),
    pytest.param("released", set_tensor("value_head.weight", torch.zeros(5, 64)), ["{d}", "5 rows", "even"], id="released-odd-dim"),
    pytest.param("released", lambda d: [p.unlink() for p in d.iterdir()], ["{d}", "no model*.safetensors"], id="empty-folder"),
]
# fmt: on


def broken_copy(base, layout: str, breaks, tmp_path: Path) -> Path:
    folder = tmp_path / f"broken-{layout}"
    shutil.copytree(getattr(base, layout), folder)
    breaks(folder)
    return folder


@pytest.mark.parametrize("layout,breaks,needles", BAD_FOLDERS)
def test_a_broken_model_folder_is_one_line_and_exit_2_in_score(base, tmp_path, layout, breaks, needles):
    folder = broken_copy(base, layout, breaks, tmp_path)
    out = tmp_path / "scores.jsonl"
    out.write_text("old scores\n")
    before = snapshot(folder, base.a, base.b, out)
    result = run("score", str(base.a), str(base.b), "-m", str(folder), "-o", str(out))
    assert_one_line_error(result, *[n.format(d=folder) for n in needles])
    assert snapshot(folder, base.a, base.b, out) == before
    assert not (folder / "RAN").exists()  # the folder's own code never ran


SHARED_LOADER_CASES = [
    "run-backbone-missing",
    "pickle-bin-only",
    "truncated-safetensors",
    "head-tau-negative",
    "sharded-shard-file-missing",
    "released-backbone-missing",
]


@pytest.mark.parametrize("command", ["eval pairs", "export"])
@pytest.mark.parametrize("layout,breaks,needles", [p for p in BAD_FOLDERS if p.id in SHARED_LOADER_CASES])
def test_the_shared_loader_refuses_the_same_folders_in_eval_and_export(base, tmp_path, command, layout, breaks, needles):
    folder = broken_copy(base, layout, breaks, tmp_path)
    before = snapshot(folder, base.data)
    if command == "export":
        result = run("export", str(folder), str(tmp_path / "exported"))
    else:
        result = run("eval", "pairs", "--data", str(base.data), "-m", str(folder), "-o", str(tmp_path / "report.json"))
    assert_one_line_error(result, *[n.format(d=folder) for n in needles])
    assert snapshot(folder, base.data) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [folder.name]  # no report, no export, no temporary folder


def test_a_pickled_backbone_folder_is_refused_for_training_too(base, tmp_path):
    folder = broken_copy(base, "run", pickles_only("pytorch_model.bin"), tmp_path)
    result = run(
        "train-rm",
        "recipes/cyclic_tiny_gpm.yaml",
        f"output_dir={tmp_path / 'out'}",
        f"model.backbone={folder}",
        "data.train=cyclic:train?num_prompts=10",
        "data.eval=null",
        "train.max_steps=1",
    )
    assert_one_line_error(result, str(folder), "pytorch_model.bin", "never unpickles")


@pytest.mark.parametrize("layout", ["run", "sharded", "released"])
def test_every_good_layout_still_scores(base, layout):
    result = run("score", str(base.a), str(base.b), "-m", str(getattr(base, layout)))
    assert result.returncode == 0, result.stderr
    assert len([line for line in result.stdout.splitlines() if line.startswith("{")]) == len(PAIRS)


# ----------------------------------------------------------------------------------------------------
# export: what it refuses, and how it replaces


def older_export(base, tmp_path: Path) -> Path:
    old = tmp_path / "old-export"
    export_model(base.run, old)
    return old


# fmt: off
BAD_EXPORTS = [
    # (arguments after `export`, from the folders of a test; what the one error line must name)
    pytest.param(lambda base, t: [base.run, base.run], ["{run}", "is the source model folder"], id="onto-its-source"),
    pytest.param(lambda base, t: [base.run, base.run, "--force"], ["{run}", "is the source model folder"], id="onto-its-source-forced"),
    pytest.param(lambda base, t: [base.run, base.run.parent, "--force"], ["holds the source model folder"], id="onto-a-folder-holding-its-source"),
    pytest.param(lambda base, t: [base.sharded, base.run], ["{run}", "train-rm run folder", "recipe.yaml", "--force"], id="into-a-run-folder"),
    pytest.param(lambda base, t: [base.run, older_export(base, t)], ["old-export", "already holds", "--force"], id="over-an-older-export"),
    pytest.param(lambda base, t: [base.run, base.a], ["{a}", "is a file, not a folder"], id="onto-a-file"),
    pytest.param(lambda base, t: [base.run, base.a / "sub" / "out"], ["{a}", "is a file, not a folder"], id="under-a-file"),
    pytest.param(lambda base, t: [base.run, t / "out", "--dtype", "int8"], ["--dtype", "int8"], id="bad-dtype"),
    pytest.param(lambda base, t: [base.run, t / "out", "--max-shard-size", "5 gigs"], ["--max-shard-size", "5 gigs"], id="bad-shard-size"),
    pytest.param(lambda base, t: [base.run, t / "out", "--sequence-classifier"], ["needs a BT model"], id="gpm-as-sequence-classifier"),
    pytest.param(lambda base, t: [t / "missing", t / "out"], ["missing", "no such model folder"], id="no-such-source"),
]
# fmt: on


@pytest.mark.parametrize("args,needles", BAD_EXPORTS)
def test_a_bad_export_is_one_line_and_exit_2_and_changes_nothing(base, tmp_path, args, needles):
    argv = [str(a) for a in args(base, tmp_path)]
    watched, parents = [base.run, base.sharded, base.a, tmp_path], [base.run.parent, tmp_path]
    before, listings = snapshot(*watched), [sorted(os.listdir(p)) for p in parents]
    result = run("export", *argv)
    assert_one_line_error(result, *[n.format(run=base.run, a=base.a) for n in needles])
    assert snapshot(*watched) == before
    assert [sorted(os.listdir(p)) for p in parents] == listings  # nothing new, no temporary folder left behind


def test_a_bad_metrics_file_in_the_source_is_one_line(base, tmp_path):
    source = tmp_path / "run"
    shutil.copytree(base.run, source)
    (source / "metrics.json").write_text('{"steps": 2,')
    assert_one_line_error(run("export", str(source), str(tmp_path / "out")), f"{source}/metrics.json", "not JSON")
    assert not (tmp_path / "out").exists()


def test_force_replaces_an_older_export_whole_so_no_stale_weight_file_remains(base, tmp_path):
    from transformers import AutoModel

    out = tmp_path / "exported"
    (tmp_path / "keep.txt").write_text("a neighbour")
    assert run("export", str(base.run), str(out)).returncode == 0  # one model.safetensors
    (out / "notes.txt").write_text("written by hand into the old export")
    result = run("export", str(base.run), str(out), "--force", "--max-shard-size", "100KB")
    assert result.returncode == 0, result.stderr
    files = sorted(p.name for p in out.iterdir())
    assert "model.safetensors" not in files and "notes.txt" not in files and "model.safetensors.index.json" in files
    assert json.loads(result.stdout.strip().splitlines()[-1])["files"] == files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported", "keep.txt"]  # no temporary folder left
    # transformers alone now reads the shards, not a stale single file: the backbone equals the run's
    plain = AutoModel.from_pretrained(out).state_dict()
    model = load_model(base.run, dtype="float32")
    for name, tensor in model.backbone.state_dict().items():
        torch.testing.assert_close(plain[name], tensor, rtol=0, atol=0)
    # and back to one file: no shard or index of the sharded export survives
    assert run("export", str(base.run), str(out), "--force").returncode == 0
    assert not [p.name for p in out.iterdir() if p.name.startswith("model-") or p.name.endswith(".index.json")]


def test_force_into_a_run_folder_replaces_it_with_the_export(base, tmp_path):
    target = tmp_path / "other-run"
    shutil.copytree(base.run, target)
    result = run("export", str(base.sharded), str(target), "--force")
    assert result.returncode == 0, result.stderr
    assert not (target / "recipe.yaml").exists() and (target / "README.md").is_file()
    torch.testing.assert_close(load_model(target).value_head.weight, load_model(base.sharded).value_head.weight, rtol=0, atol=0)


def test_an_interrupted_export_leaves_the_old_export_intact(base, tmp_path, monkeypatch):
    import gpmctl.models.export

    old = older_export(base, tmp_path)
    before = snapshot(old)

    def interrupted(model, out_dir, *args, **kwargs):
        (Path(out_dir) / "model.safetensors").write_bytes(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(gpmctl.models.export, "save_model", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_model(base.run, old, force=True)
    assert snapshot(old) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old-export"]


def test_export_creates_missing_parent_folders(base, tmp_path):
    out = tmp_path / "exported" / "cyclic-gpm"
    assert run("export", str(base.run), str(out)).returncode == 0
    assert load_model(out).head == load_model(base.run).head


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_written_model_files_get_the_permissions_the_umask_allows(base, tmp_path, umask):
    """safetensors writes 0600 and mkdtemp 0700; a shared model folder must be readable by the group."""
    from gpmctl.models.io import save_model

    saved = os.umask(umask)
    try:
        assert run("export", str(base.run), str(tmp_path / "exported"), "--max-shard-size", "100KB").returncode == 0
        save_model(load_model(base.run), tmp_path / "saved", load_tokenizer(str(base.run)))  # what train-rm writes
    finally:
        os.umask(saved)
    for folder in (tmp_path / "exported", tmp_path / "saved"):
        assert folder.stat().st_mode & 0o777 == 0o777 & ~umask
        for path in folder.rglob("*"):
            assert path.stat().st_mode & 0o777 == (0o777 if path.is_dir() else 0o666) & ~umask, path
