"""`gpmctl train-gpo`: General Preference Optimization (or SPPO) of a policy against a GPM / BT judge.

The recipe, top to bottom (gpm_paper.md 9.1-9.2); iteration t samples from pi_{t-1} and writes pi_t:
  0. pi_0: policy.model, or the tiny Llama warmed up on the cyclic task      iter-0/policy/
     and its samples on the held-out prompts                                iter-0/eval_generations.jsonl
  for t = 1..T:
  1. K responses per prompt from pi_{t-1} (sampling, seed per sample)       iter-t/generations.jsonl
  2. each response embedded ONCE by the judge; the K x K score table        iter-t/scores.jsonl
  3. regression targets; the pair (best, worst) or all K per prompt         iter-t/pairs.jsonl
  4. minimise (log pi/pi_{t-1} - target)^2 (gpmctl.train.gpo_loss)         iter-t/policy/ = pi_t
  5. held-out win rates of pi_t against pi_0 and pi_{t-1} under the judge    iter-t/eval_generations.jsonl,
                                                                              iter-t/metrics.json, log.jsonl
pi_t is the next iteration's sampler and reference. Resume (`--resume auto`) is per iteration: an
iteration with metrics.json is done; an unfinished one reuses its saved generations and scores and
trains again from pi_{t-1}. Each saved sample or score file has its settings beside it (K, sampling,
prompts, judge: generations.settings.json, ...); a resume whose recipe changed them stops before
writing anything. Deleting iter-t/metrics.json (and later iterations) re-trains iteration t
from its saved generations, e.g. with the other loss.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gpmctl.errors import ConfigError, GpmctlError
from gpmctl.models import preference as P
from gpmctl.models.reward_model import HEAD_FILE
from gpmctl.train import gpo_loss as L
from gpmctl.config.train_gpo import GpoRecipe
from gpmctl.train.gpo_policy import (
    Sample, build_tiny_policy, encode_prompt, generate, load_policy, policy_tokenizer, read_prompts, save_policy,
    sequence_logps, warmup_cyclic,
)  # fmt: skip
from gpmctl.train.loop import shard_map
from gpmctl.utils import RunLog, atomic_write_text, environment_report, json_text, log, output_folder, quiet_libraries

EVAL_SEED_OFFSET = 7_777_777  # eval samples use their own seeds, the same for every policy


@dataclass
class GpoResult:
    output_dir: Path
    policy: Path
    iterations: list[dict] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------------
# Files of a run


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json_text(row, ensure_ascii=False) + "\n")
    tmp.replace(path)


def _prompts(recipe: GpoRecipe, key: str, source: str, limit: int | None) -> list[list[dict]]:
    """The prompts of `key`; a problem with them is one line naming the recipe, the key and the file."""
    try:
        return read_prompts(source, limit)
    except GpmctlError as e:
        raise ConfigError(f"{getattr(recipe, 'source', 'recipe')}: {key}: {e}") from None


def _settings_path(path: Path) -> Path:
    return path.with_suffix(".settings.json")  # generations.jsonl -> generations.settings.json


def _check_saved(path: Path, settings: dict) -> None:
    """A file an earlier start of this run saved (samples, scores) is reused on resume only if the settings
    saved beside it are the recipe's: K=5 samples must not be read as K=3 ones, nor scores of another judge."""
    if not path.is_file():
        return
    restart = "restore the recipe, or pass --overwrite to start again"
    side = _settings_path(path)
    if not side.is_file():
        raise ConfigError(f"{path}: has no {side.name} to say how it was made; {restart}")
    saved = json.loads(side.read_text(encoding="utf-8"))
    for key, value in settings.items():
        if saved.get(key) != value:
            raise ConfigError(f"{path}: was made with {key} {saved.get(key)!r}, the recipe now gives {value!r}; {restart}")


def _saved_settings(recipe: GpoRecipe, train_prompts: list, eval_prompts: list) -> dict[str, dict]:
    """What each reusable file of an iteration depends on besides pi_{t-1}, by file name."""
    g, d = recipe.generation, recipe.data

    def prompts(rows: list) -> dict:
        return {"count": len(rows), "sha256": hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()}

    sampling = {"generation.temperature": g.temperature, "generation.top_p": g.top_p, "generation.max_new_tokens": g.max_new_tokens,
                "generation.seed": g.seed, "data.max_prompt_length": d.max_prompt_length}  # fmt: skip
    return {
        "generations.jsonl": {"prompts (data.train)": prompts(train_prompts), "generation.k": g.k, **sampling},
        "eval_generations.jsonl": {"prompts (data.eval)": prompts(eval_prompts), "eval.samples": recipe.eval.samples, **sampling},
        "scores.jsonl": {"judge.model": str(recipe.judge.model), "judge.max_length": recipe.judge.max_length},
    }


def _check_resume(output_dir: Path, recipe: GpoRecipe, settings: dict[str, dict]) -> None:
    """Every saved file a resumed run would read, checked before the run writes anything."""
    for t in range(recipe.objective.iterations + 1):
        d = _iteration_dir(output_dir, t)
        _check_saved(d / "eval_generations.jsonl", settings["eval_generations.jsonl"])
        if t and not (d / "metrics.json").is_file():
            _check_saved(d / "generations.jsonl", settings["generations.jsonl"])
            _check_saved(d / "scores.jsonl", settings["scores.jsonl"])


def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _generation_rows(prompts: list[list[dict]], samples: list[list[Sample]]) -> list[dict]:
    return [
        {"prompt_index": n, "prompt": prompt, "responses": [s.text for s in row], "response_ids": [s.ids for s in row],
         "finished": [s.finished for s in row]}
        for n, (prompt, row) in enumerate(zip(prompts, samples))
    ]  # fmt: skip


def _iteration_dir(output_dir: Path, t: int) -> Path:
    return output_dir / f"iter-{t}"


# ----------------------------------------------------------------------------------------------------
# The judge


def ensure_judge(recipe: GpoRecipe) -> Path:
    """The judge folder; trained first with `judge.train_recipe` when it holds no model yet."""
    j = recipe.judge
    path = Path(j.model)
    if (path / HEAD_FILE).is_file():
        return path
    if j.train_recipe is None:
        raise ConfigError(f"judge.model: {path} holds no gpmctl model; train one (gpmctl train-rm RECIPE output_dir={path}) or set judge.train_recipe")
    from gpmctl.config import load_recipe, resolve_recipe
    from gpmctl.train.reward import train_reward_model

    rm_recipe = load_recipe(resolve_recipe(j.train_recipe), [*j.train_overrides, f"output_dir={path}"])
    log(f"judge: {path} holds no model; training it with {j.train_recipe} first")
    train_reward_model(rm_recipe, resume="auto")
    return path


@torch.no_grad()
def judge_scores(judge, encoder, prompts: list[list[dict]], responses: list[list[str]], batch_size: int, accelerator) -> torch.Tensor:
    """Raw judge scores [N, K, K] (GPM s(y_i > y_j) or BT r_i - r_j, before tau): one embedding per response.
    The prompts are dealt over the processes in blocks; every process gets the whole table."""
    from gpmctl.score import embed_sequences

    K = len(responses[0])

    def block(rows: list, _: int) -> list[torch.Tensor]:
        seqs = [encoder.encode(p, [{"role": "assistant", "content": text}]) for p, row in rows for text in row]
        value, gate = embed_sequences(judge, seqs, batch_size, encoder.tokenizer.pad_token_id, accelerator.device)
        value = value.double().cpu().view(len(rows), K, *value.shape[1:])
        if judge.head.kind == "bt":
            return list(P.bt_score_matrix(value))
        gate = None if gate is None else P.prompt_gate(gate.double().cpu().view(len(rows), K, -1))
        return list(P.score_matrix(value, gate))

    return torch.stack(shard_map(accelerator, list(zip(prompts, responses)), block, max(1, batch_size // K)))


def win_rate(judge, encoder, prompts, new: list[list[str]], old: list[list[str]], batch_size: int, accelerator) -> float:
    """Mean over prompts of P(y_new > y_old) under the judge, every new sample against every old one."""
    raw = judge_scores(judge, encoder, prompts, [a + b for a, b in zip(new, old)], batch_size, accelerator)
    m = len(new[0])
    prob = P.preference_probability(raw[:, :m, m:], judge.head.tau)
    return float(prob.mean())


def sample(policy, tokenizer, prompt_ids: list[list[int]], seeds: list[int], gen, accelerator) -> list[list[Sample]]:
    """len(seeds) samples per prompt; batches of prompts dealt over the processes (same texts as one process)."""
    return shard_map(accelerator, prompt_ids, lambda chunk, b: generate(policy, tokenizer, chunk, seeds, gen, accelerator.device, b), gen.batch_size)


def cyclic_win_rate(new: list[list[str]], old: list[list[str]], num_items: int) -> float | None:
    """The same win rate under the cyclic task's true rule (ties 1/2), over responses that are item words."""
    from gpmctl.data.cyclic import ITEM_WORDS, prefers

    index = {w: i for i, w in enumerate(ITEM_WORDS[:num_items])}
    wins = []
    for row_new, row_old in zip(new, old):
        for a in row_new:
            for b in row_old:
                if a in index and b in index:
                    r = prefers(index[a], index[b], num_items)
                    wins.append(0.5 if r is None else float(r))
    return sum(wins) / len(wins) if wins else None


# ----------------------------------------------------------------------------------------------------
# One iteration's optimisation


def build_training_set(recipe: GpoRecipe, generations: list[dict], raw: torch.Tensor, tau: float, kind: str) -> tuple[list[dict], list[dict]]:
    """Targets per response and the sequences to train on -> (pairs.jsonl rows, [(prompt n, sample k, target)])."""
    o = recipe.objective
    S = L.score_table(raw, tau, kind, o.score_table)  # [N, K, K] log-odds table
    opponent = L.opponent_score(S, o.loss)  # [N, K]: s_hat(y > pi_t) (eq. 5.2) or P_hat - 1/2 (SPPO)
    target = L.regression_target(opponent, o.beta, o.target_clamp)  # (1/beta)(... - log Z), log Z = 0 (eq. 5.3)
    rows, train = [], []
    if o.train_on == "pairs":  # the authors' pipeline: best and worst of the K by aggregate score
        chosen, rejected = L.pair_indices(S)
        for n, g in enumerate(generations):
            w, l = int(chosen[n]), int(rejected[n])
            rows.append({
                "prompt_index": n, "prompt": g["prompt"], "chosen": g["responses"][w], "rejected": g["responses"][l],
                "chosen_index": w, "rejected_index": l, "chosen_score": float(opponent[n, w]),
                "rejected_score": float(opponent[n, l]), "chosen_target": float(target[n, w]), "rejected_target": float(target[n, l]),
            })  # fmt: skip
            train += [{"n": n, "k": w, "target": float(target[n, w])}, {"n": n, "k": l, "target": float(target[n, l])}]
    else:  # every sample: the expectation over y ~ pi_t of eq. 5.3
        for n, g in enumerate(generations):
            rows.append({"prompt_index": n, "prompt": g["prompt"], "responses": g["responses"],
                         "scores": opponent[n].tolist(), "targets": target[n].tolist()})  # fmt: skip
            train += [{"n": n, "k": k, "target": float(target[n, k])} for k in range(len(g["responses"]))]
    return rows, train


def _save_step(path: Path, model, optimizer, scheduler, state: dict) -> None:
    """A step checkpoint inside an iteration: weights (tied ones once), optimizer, scheduler, position."""
    from safetensors.torch import save_model

    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / "model.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    (tmp / "trainer_state.json").write_text(json.dumps({**state, "scheduler": scheduler.state_dict()}))
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def _load_step(path: Path, model, optimizer, scheduler) -> dict:
    from safetensors.torch import load_model

    load_model(model, str(path / "model.safetensors"))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu"))
    state = json.loads((path / "trainer_state.json").read_text())
    scheduler.load_state_dict(state.pop("scheduler"))
    return state


def optimise(policy, recipe: GpoRecipe, prompt_ids: list[list[int]], generations: list[dict], train: list[dict],
             t: int, accelerator, runlog: RunLog, stop, state_dir: Path | None = None) -> tuple[dict, dict | None]:  # fmt: skip
    """Minimise the squared loss of eq. 5.3 over `train`; the reference pi_{t-1} is the policy as given.

    Each optimizer step takes train.batch_size x grad_accum x processes sequences (every process its own
    share, as train-rm). With `state_dir`, the optimisation is checkpointed there every `train.save_steps`
    steps and on a stop signal, and continues from such a checkpoint (after computing the reference
    log-probs from pi_{t-1}). Returns (stats, the trained weights gathered from ZeRO-3 shards or None)."""
    from gpmctl.data.batches import epoch_batches
    from gpmctl.train import checkpoint as ckpt
    from gpmctl.train.loop import Preempted, any_rank, backward_step, zero3_plugin
    from gpmctl.train.optim import build_optimizer, build_schedule

    c, o = recipe.train, recipe.objective
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    prompts = [prompt_ids[r["n"]] for r in train]
    responses = [generations[r["n"]]["response_ids"][r["k"]][: max(c.max_length - len(prompt_ids[r["n"]]), 1)] for r in train]
    targets = torch.tensor([r["target"] for r in train], dtype=torch.float32)

    # log pi_{t-1}(y|x) once, before any update (the reference needs no second model in memory); the
    # sequences are dealt over the processes and every process gets all of them.
    policy.eval()

    @torch.no_grad()
    def reference(rows: list[int], _: int) -> list[tuple[float, int]]:
        with accelerator.autocast():  # the precision of the training forward, so the log-ratio starts at 0
            lp, n = sequence_logps(policy, [prompts[i] for i in rows], [responses[i] for i in rows], device)
        return list(zip(lp.float().cpu().tolist(), n.cpu().tolist()))

    ref = shard_map(accelerator, list(range(len(train))), reference, c.batch_size)
    ref_logp = torch.tensor([lp for lp, _ in ref], dtype=torch.float32)
    length = torch.tensor([n for _, n in ref])

    def batches(epoch: int) -> list[list[int]]:  # this process's micro-batches: a permutation per (seed, t, epoch)
        return epoch_batches(len(train), c.batch_size, c.seed, 1009 * t + epoch, rank, world)

    micro_per_epoch = len(batches(0))
    if micro_per_epoch < c.grad_accum:
        raise ConfigError(f"train.batch_size x train.grad_accum x processes exceeds the {len(train)} training sequences of iteration {t}")
    total = max(1, math.ceil(c.epochs * micro_per_epoch / c.grad_accum))
    optimizer = build_optimizer(policy, c)
    scheduler = build_schedule(optimizer, c, total)
    model, optimizer = accelerator.prepare(policy, optimizer)
    model.train()
    sharded = accelerator.state.deepspeed_plugin is not None  # DeepSpeed: each rank saves its optimizer shard
    layout = {"world_size": world, "engine": "deepspeed" if sharded else "torch"}
    state = {"step": 0, "epoch": 0, "micro_batch": 0}
    if state_dir is not None and (state_dir / "trainer_state.json").is_file():
        saved = ckpt.read_trainer_state(state_dir)
        if {k: saved.get(k) for k in layout} != layout:
            log(f"iteration {t}: {state_dir} was written by {saved.get('world_size')} processes ({saved.get('engine')}); "
                f"this run has {world} ({layout['engine']}): training the iteration again from its saved generations")
        else:
            saved = ckpt.load_sharded_checkpoint(state_dir, accelerator, scheduler) if sharded else \
                _load_step(state_dir, accelerator.unwrap_model(model), optimizer, scheduler)  # fmt: skip
            state = {k: saved[k] for k in state}
            log(f"iteration {t}: continuing the optimisation from step {state['step']} ({state_dir})")

    def checkpoint() -> None:
        if state_dir is None:
            return
        if sharded:
            ckpt.save_sharded_checkpoint(state_dir, accelerator, scheduler, {**state, **layout})
        elif accelerator.is_main_process:
            _save_step(state_dir, accelerator.unwrap_model(model), optimizer, scheduler, {**state, **layout})
        accelerator.wait_for_everyone()

    started, window = time.perf_counter(), []
    while state["step"] < total:
        mine = batches(state["epoch"])[: micro_per_epoch // c.grad_accum * c.grad_accum]  # whole optimizer steps only
        while state["micro_batch"] < len(mine) and state["step"] < total:
            idx = mine[state["micro_batch"]]
            with accelerator.accumulate(model):
                logp, _ = sequence_logps(model, [prompts[i] for i in idx], [responses[i] for i in idx], device)
                lens = length[idx].to(device) if o.length_norm else None
                ratio = L.log_ratio(logp, ref_logp[idx].to(device), lens, o.length_gamma)  # log pi_theta/pi_t (/|y|^gamma: App. E.2)
                loss = L.squared_loss(ratio, targets[idx].to(device))  # (ratio - (1/beta) s_hat)^2, eq. 5.3
                grad_norm = backward_step(accelerator, model, optimizer, loss, c.max_grad_norm, step=state["step"] + 1)
            state["micro_batch"] += 1
            window.append(float(loss.detach()))
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            state["step"] += 1
            step = state["step"]
            if step % c.logging_steps == 0 or step == total:
                record = {"event": "train", "iteration": t, "step": step, "loss": sum(window) / len(window),
                          "lr": scheduler.get_last_lr()[0], "grad_norm": None if grad_norm is None else float(grad_norm),
                          "ratio_mean": float(ratio.detach().mean())}  # fmt: skip
                runlog.write(record)
                window = []
            if any_rank(accelerator, stop.signal is not None):  # a signal may reach the ranks at different steps
                checkpoint()
                where = "continues from this step" if state_dir is not None else "re-trains it from its saved generations"
                raise Preempted(f"stopped in iteration {t} at step {step} ({stop.signal or 'a signal to another rank'}); --resume auto {where}")
            if c.save_steps and step % c.save_steps == 0 and step < total:
                checkpoint()
        if state["micro_batch"] >= len(mine):
            state["epoch"] += 1
            state["micro_batch"] = 0
    gathered = accelerator.get_state_dict(model) if zero3_plugin(accelerator) else None  # a collective: every rank
    accelerator.free_memory()
    policy.eval()
    stats = {"steps": state["step"], "train_seconds": round(time.perf_counter() - started, 2), "sequences": len(train),
             "target_abs_mean": float(targets.abs().mean()), "processes": world}  # fmt: skip
    return stats, gathered


# ----------------------------------------------------------------------------------------------------
# The run


def _prepare_output(output_dir: Path, resume: str | None, overwrite: bool, main: bool = True) -> None:
    """Check --resume / --overwrite against the folder (every process); process 0 clears it for --overwrite."""
    if overwrite and resume not in (None, "none"):
        raise ConfigError("--overwrite and --resume exclude each other")
    started = output_dir.is_dir() and any(output_dir.glob("iter-*"))
    if overwrite:
        if started and main:
            for d in output_dir.glob("iter-*"):
                shutil.rmtree(d)
            (output_dir / "log.jsonl").unlink(missing_ok=True)
    elif started and resume in (None, "none"):
        raise ConfigError(f"{output_dir}: already holds a run; pass --resume auto to continue it or --overwrite to start again")
    elif resume not in (None, "none", "auto"):
        raise ConfigError(f"--resume {resume}: train-gpo resumes per iteration; use --resume auto")


def train_gpo(recipe: GpoRecipe, resume: str | None = None, overwrite: bool = False) -> GpoResult:
    """The whole run (module docstring). Under several processes (launch.num_processes, or any launcher)
    sampling, judging and the reference log-probs are dealt over the processes, the optimisation is data
    parallel (DDP or DeepSpeed ZeRO), and process 0 alone writes files."""
    from gpmctl.data.tokenize import SequenceEncoder
    from gpmctl.models.loading import load_model, load_tokenizer, training_dtype
    from gpmctl.train.loop import StopFlag, built_whole, keeps_fp32_master_weights, make_accelerator, zero3_plugin

    quiet_libraries()
    output_dir = output_folder(recipe.output_dir, getattr(recipe, "source", "recipe"))
    c, g, pc = recipe.train, recipe.generation, recipe.policy
    # the inputs first: a bad prompt file or a resume with other settings stops before anything is written
    train_prompts = _prompts(recipe, "data.train", recipe.data.train, recipe.data.max_prompts)
    eval_prompts = _prompts(recipe, "data.eval", recipe.data.eval, recipe.data.max_eval_prompts) if recipe.data.eval else []
    settings = _saved_settings(recipe, train_prompts, eval_prompts)
    accelerator, precision = make_accelerator(c.precision, c.grad_accum, c.batch_size, c.max_grad_norm, getattr(recipe, "source", "recipe"))
    main, device, zero3 = accelerator.is_main_process, accelerator.device, zero3_plugin(accelerator)
    _prepare_output(output_dir, resume, overwrite, main)
    accelerator.wait_for_everyone()
    _check_resume(output_dir, recipe, settings)
    judge_path = ensure_judge(recipe)

    def write(path: Path, rows: list[dict]) -> None:  # process 0 writes; the others wait until it is there
        if main:
            if path.name in settings:  # its settings first, so a saved file always has them beside it
                atomic_write_text(_settings_path(path), json_text(settings[path.name], indent=2))
            _write_jsonl(path, rows)
        accelerator.wait_for_everyone()

    if main:
        from gpmctl.config import dump_recipe

        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "recipe.yaml").write_text(dump_recipe(recipe))
        (output_dir / "environment.json").write_text(json.dumps(environment_report(accelerator), indent=2))
    accelerator.wait_for_everyone()
    runlog = RunLog(output_dir / "log.jsonl", enabled=main)

    # Every process holds the judge and the sampler whole (under ZeRO-3 only the optimised copy is sharded).
    judge = built_whole(lambda: load_model(judge_path, dtype=recipe.judge.dtype, device=device), zero3)
    judge_tok = load_tokenizer(str(judge_path))
    encoder = SequenceEncoder(judge_tok, recipe.judge.max_length, judge.head.eos, judge.head.gate_prompt, "right")
    tau, kind = judge.head.tau, judge.head.kind
    log(f"judge: {judge_path} ({kind}, dim {judge.head.dim}, tau {tau}); {accelerator.num_processes} process(es), {precision}")

    tokenizer = policy_tokenizer(pc.tokenizer or pc.model, pc.trust_remote_code)
    encode = lambda ps: [encode_prompt(tokenizer, p, recipe.data.max_prompt_length) for p in ps]  # noqa: E731
    train_ids, eval_ids = encode(train_prompts), encode(eval_prompts)
    log(f"prompts: {len(train_prompts)} train, {len(eval_prompts)} held-out; K = {g.k}, {recipe.objective.iterations} iterations, loss {recipe.objective.loss}")
    cyclic_items = pc.warmup.num_items if str(recipe.data.eval or "").startswith("cyclic:") else None
    eval_seeds = [g.seed * (p + 1) + EVAL_SEED_OFFSET for p in range(recipe.eval.samples)]

    # pi_t is sampled and then trained: float32 weights (the optimizer's), unless the engine keeps fp32 copies
    policy_dtype = training_dtype(pc.dtype, device, keeps_fp32_master_weights(accelerator))

    def load(t: int):
        path = str(_iteration_dir(output_dir, t) / "policy")
        return built_whole(lambda: load_policy(path, policy_dtype, device, pc.attn_implementation, pc.trust_remote_code), zero3)

    def eval_samples(t: int, policy=None) -> list[list[str]]:
        """Held-out samples of pi_t (generated once, then read from iter-t/eval_generations.jsonl)."""
        path = _iteration_dir(output_dir, t) / "eval_generations.jsonl"
        if not path.is_file():
            samples = sample(policy if policy is not None else load(t), tokenizer, eval_ids, eval_seeds, g, accelerator)
            write(path, _generation_rows(eval_prompts, samples))
        return [row["responses"] for row in _read_jsonl(path)]

    # 0. pi_0
    it0 = _iteration_dir(output_dir, 0)
    if main and not (it0 / "policy" / "config.json").is_file():
        it0.mkdir(exist_ok=True)
        if pc.model == "tiny":
            policy = built_whole(lambda: build_tiny_policy(tokenizer, pc.tiny, c.seed, pc.attn_implementation), zero3).to(device)
            if pc.warmup.steps:
                stats = warmup_cyclic(policy, tokenizer, train_ids, pc.warmup, c.seed, device)
                runlog.write({"event": "warmup", **stats})
                log(f"pi_0: tiny policy warmed up on cyclic item words ({pc.warmup.steps} steps, loss {stats['loss']:.4f})")
        else:
            policy = built_whole(lambda: load_policy(pc.model, pc.dtype, device, pc.attn_implementation, pc.trust_remote_code), zero3)
        save_policy(policy, tokenizer, it0 / "policy")
    accelerator.wait_for_everyone()
    initial_eval = eval_samples(0) if eval_prompts else None

    results = []
    with StopFlag() as stop:
        for t in range(1, recipe.objective.iterations + 1):
            d = _iteration_dir(output_dir, t)
            if (d / "metrics.json").is_file():
                results.append(json.loads((d / "metrics.json").read_text()))
                log(f"iteration {t}: done earlier, skipped")
                continue
            if main:
                d.mkdir(exist_ok=True)
            started = time.perf_counter()
            policy = load(t - 1)
            if pc.gradient_checkpointing:
                policy.gradient_checkpointing_enable()

            # 1. K samples per prompt from pi_{t-1}
            gen_path = d / "generations.jsonl"
            if gen_path.is_file():
                log(f"iteration {t}: reusing {gen_path}")
            else:
                seeds = [g.seed * (p + 1) + 1_000_003 * t for p in range(g.k)]
                write(gen_path, _generation_rows(train_prompts, sample(policy, tokenizer, train_ids, seeds, g, accelerator)))
            generations = _read_jsonl(gen_path)
            _stop_between_stages(stop, t, "generation", accelerator)

            # 2. the K x K table: K judge forwards per prompt
            score_path = d / "scores.jsonl"
            if score_path.is_file():
                raw = torch.tensor([row["raw"] for row in _read_jsonl(score_path)], dtype=torch.float64)
            else:
                raw = judge_scores(judge, encoder, train_prompts, [row["responses"] for row in generations], recipe.judge.batch_size, accelerator)
                logit = raw / tau
                write(score_path, [
                    {"prompt_index": n, "kind": kind, "tau": tau, "raw": raw[n].tolist(), "logit": logit[n].tolist(),
                     "win_rate": torch.sigmoid(logit[n]).mean(-1).tolist()}
                    for n in range(len(generations))
                ])  # fmt: skip
            _stop_between_stages(stop, t, "scoring", accelerator)

            # 3. targets and training sequences (recomputed from the table: switching the loss needs no new samples)
            pair_rows, train = build_training_set(recipe, generations, raw, tau, kind)
            write(d / "pairs.jsonl", pair_rows)

            # 4. optimise -> pi_t
            stats, gathered = optimise(policy, recipe, train_ids, generations, train, t, accelerator, runlog, stop, d / "train_state")
            if main:
                save_policy(policy, tokenizer, d / "policy", state_dict=gathered)
                shutil.rmtree(d / "train_state", ignore_errors=True)
            accelerator.wait_for_everyone()
            if zero3:  # the optimised copy is sharded: sample from the saved one
                policy = load(t)

            # 5. held-out win rates
            metrics = {"iteration": t, "loss": recipe.objective.loss, **stats}
            if eval_prompts:
                new = eval_samples(t, policy)
                previous = eval_samples(t - 1) if t > 1 else initial_eval
                bs = recipe.judge.batch_size
                metrics["win_rate_vs_initial"] = win_rate(judge, encoder, eval_prompts, new, initial_eval, bs, accelerator)
                metrics["win_rate_vs_previous"] = win_rate(judge, encoder, eval_prompts, new, previous, bs, accelerator)
                if cyclic_items:
                    metrics["true_win_rate_vs_initial"] = cyclic_win_rate(new, initial_eval, cyclic_items)
                    metrics["true_win_rate_vs_previous"] = cyclic_win_rate(new, previous, cyclic_items)
                    metrics["eval_items"] = _histogram(new)
            metrics["seconds"] = round(time.perf_counter() - started, 2)
            if main:
                (d / "metrics.json").write_text(json_text(metrics, indent=2))
            accelerator.wait_for_everyone()
            runlog.write({"event": "iteration", **metrics})
            shown = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if k.startswith(("win_rate", "true_win")) and v is not None)
            log(f"iteration {t}/{recipe.objective.iterations} ({recipe.objective.loss}): {shown} ({metrics['seconds']:.0f}s)")
            results.append(metrics)
            del policy

    final = _iteration_dir(output_dir, recipe.objective.iterations) / "policy"
    if main:
        (output_dir / "metrics.json").write_text(json_text({"policy": str(final), "iterations": results}, indent=2))
    runlog.write({"event": "done", "policy": str(final)})
    runlog.close()
    accelerator.wait_for_everyone()
    return GpoResult(output_dir, final, results)


def _stop_between_stages(stop, t: int, stage: str, accelerator) -> None:
    """SIGTERM / SIGUSR1 during a stage take effect once its output is saved (on every process alike)."""
    from gpmctl.train.loop import Preempted, any_rank

    if any_rank(accelerator, stop.signal is not None):
        raise Preempted(f"stopped in iteration {t} after {stage} ({stop.signal or 'a signal to another rank'}); --resume auto continues from the saved files")


def _histogram(samples: list[list[str]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in samples:
        for text in row:
            counts[text] = counts.get(text, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))
