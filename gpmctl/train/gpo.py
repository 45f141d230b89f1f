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
     (and under eval.judge, a judge it is not trained against), mean         iter-t/metrics.json, log.jsonl
     response length, seconds per stage
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
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gpmctl.config.train_gpo import GpoRecipe, JudgeConfig
from gpmctl.errors import ConfigError, GpmctlError
from gpmctl.models import preference as P
from gpmctl.models.policy import (
    Sample,
    build_tiny_policy,
    encode_prompt,
    generate,
    load_policy,
    policy_tokenizer,
    read_prompts,
    save_policy,
    sequence_logps,
)
from gpmctl.train import gpo_loss as L
from gpmctl.utils import RunLog, atomic_write_text, first_line, json_text, log, output_folder, quiet_libraries

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

    sampling = {
        "generation.temperature": g.temperature,
        "generation.top_p": g.top_p,
        "generation.max_new_tokens": g.max_new_tokens,
        "generation.seed": g.seed,
        "data.max_prompt_length": d.max_prompt_length,
    }
    return {
        "generations.jsonl": {"prompts (data.train)": prompts(train_prompts), "generation.k": g.k, **sampling},
        "eval_generations.jsonl": {"prompts (data.eval)": prompts(eval_prompts), "eval.samples": recipe.eval.samples, **sampling},
        "scores.jsonl": {"judge.model": recipe.judge.url or str(recipe.judge.model), "judge.max_length": recipe.judge.max_length},
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
        {
            "prompt_index": n,
            "prompt": prompt,
            "responses": [s.text for s in row],
            "response_ids": [s.ids for s in row],
            "finished": [s.finished for s in row],
        }
        for n, (prompt, row) in enumerate(zip(prompts, samples))
    ]


def _iteration_dir(output_dir: Path, t: int) -> Path:
    return output_dir / f"iter-{t}"


# ----------------------------------------------------------------------------------------------------
# The judge


def ensure_judge(j: JudgeConfig, key: str = "judge") -> Path:
    """The folder of judge section `key` (`judge`, `eval.judge`): a folder holding a model gpmctl reads (its own,
    or another tool's reward model), trained first with its `train_recipe` when it holds none yet; without a
    train recipe, a hub id or package: source."""
    from gpmctl.models.io import holds_model, model_folder, names_source

    path = Path(j.model)
    if path.is_dir() and holds_model(path):
        return path
    if j.train_recipe is None and names_source(str(j.model)):
        return model_folder(str(j.model))
    if j.train_recipe is None:
        raise ConfigError(
            f"{key}.model: {path} holds no gpmctl model; train one (gpmctl train-rm RECIPE output_dir={path}) or set {key}.train_recipe"
        )
    from gpmctl.config import load_recipe, resolve_recipe
    from gpmctl.train.reward import train_reward_model

    rm_recipe = load_recipe(resolve_recipe(j.train_recipe), [*j.train_overrides, f"output_dir={path}"])
    log(f"{key}: {path} holds no model; training it with {j.train_recipe} first")
    resume = None if rm_recipe.model.freeze_backbone else "auto"  # a frozen backbone's head keeps no checkpoints to resume
    train_reward_model(rm_recipe, resume=resume)
    return path


def open_judge(j: JudgeConfig, judge_path: Path | None, engine, where: str = "recipe: judge"):
    """A judge: a running `gpmctl serve` (its url), or the model loaded here; every process holds it whole
    (where the engine shards weights, only the optimised copy is). `where` names the section in messages."""
    import os

    from gpmctl.models.embed import Scorer, model_encoder, resolve_share_prompt
    from gpmctl.models.io import load_model
    from gpmctl.models.sources import load_tokenizer

    if j.url is not None:
        from gpmctl.serve.client import RemoteJudge

        return RemoteJudge(j.url, os.environ.get(j.api_key_env), j.batch_size)
    net = engine.build(lambda: load_model(judge_path, dtype=j.dtype, device=engine.device))
    encoder = model_encoder(net, load_tokenizer(str(judge_path)), j.max_length)
    shared = resolve_share_prompt(net, j.share_prompt, where)
    return Scorer(net, encoder, j.batch_size, engine.device, shared)


def judge_scores(judge, prompts: list[list[dict]], responses: list[list[str]], engine) -> torch.Tensor:
    """Raw judge scores [N, K, K] (GPM s(y_i > y_j) or BT r_i - r_j, before tau) from the judge
    (gpmctl.models.embed.Scorer): one embedding per response. The prompts are dealt over the processes in
    blocks; every process gets the whole table."""
    K = len(responses[0])

    def block(rows: list, _: int) -> list[torch.Tensor]:
        value, gate = judge.embed(
            [p for p, _ in rows], [[[{"role": "assistant", "content": text}] for text in row] for _, row in rows]
        )
        return list(judge.score_matrix(value, gate))

    return torch.stack(engine.shard_map(list(zip(prompts, responses)), block, max(1, judge.batch_size // K)))


def prompt_win_rates(judge, prompts, new: list[list[str]], old: list[list[str]], engine) -> torch.Tensor:
    """P(y_new > y_old) under the judge per prompt [N]: the mean over every new sample against every old one."""
    raw = judge_scores(judge, prompts, [a + b for a, b in zip(new, old)], engine)
    m = len(new[0])
    return P.preference_probability(raw[:, :m, m:], judge.tau).mean((1, 2))


def win_rate_metrics(name: str, per_prompt: torch.Tensor) -> dict[str, float]:
    """{name: the mean over prompts, name_se: its standard error over prompts (sample sd / sqrt(N))}."""
    n = len(per_prompt)
    se = float(per_prompt.double().std() / math.sqrt(n)) if n > 1 else float("nan")
    return {name: float(per_prompt.double().mean()), f"{name}_se": se}


def response_tokens(rows: list[dict]) -> dict[str, float]:
    """Mean response length in policy tokens (the stop token not counted) and the share of responses that
    ended with a stop token (the rest hit generation.max_new_tokens), over all samples of a generations file."""
    lengths = [len(ids) - done for row in rows for ids, done in zip(row["response_ids"], row["finished"])]
    finished = [done for row in rows for done in row["finished"]]
    return {"mean_tokens": sum(lengths) / len(lengths), "finished": sum(finished) / len(finished)}


def sample(policy, tokenizer, prompt_ids: list[list[int]], seeds: list[int], gen, engine) -> list[list[Sample]]:
    """len(seeds) samples per prompt; batches of prompts dealt over the processes (same texts as one process)."""
    return engine.shard_map(
        prompt_ids, lambda chunk, b: generate(policy, tokenizer, chunk, seeds, gen, engine.device, b), gen.batch_size
    )


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


def build_training_set(
    recipe: GpoRecipe, generations: list[dict], raw: torch.Tensor, tau: float, kind: str
) -> tuple[list[dict], list[dict]]:
    """Targets per response and the sequences to train on -> (pairs.jsonl rows, [(prompt n, sample k, target)])."""
    o = recipe.objective
    S = L.score_table(raw, tau, kind, o.score_table)  # [N, K, K] log-odds table
    opponent = L.opponent_score(S, o.loss)  # [N, K]: s_hat(y > pi_t) (eq. 5.2) or P_hat - 1/2 (SPPO)
    target = L.regression_target(opponent, o.beta, o.target_clamp)  # (1/beta)(... - log Z), log Z = 0 (eq. 5.3)
    rows, train = [], []
    if o.train_on == "pairs":  # the authors' pipeline: best and worst of the K by aggregate score
        chosen, rejected = L.pair_indices(S)
        for n, g in enumerate(generations):
            best, worst = int(chosen[n]), int(rejected[n])
            rows.append(
                {
                    "prompt_index": n,
                    "prompt": g["prompt"],
                    "chosen": g["responses"][best],
                    "rejected": g["responses"][worst],
                    "chosen_index": best,
                    "rejected_index": worst,
                    "chosen_score": float(opponent[n, best]),
                    "rejected_score": float(opponent[n, worst]),
                    "chosen_target": float(target[n, best]),
                    "rejected_target": float(target[n, worst]),
                }
            )
            train += [
                {"n": n, "k": best, "target": float(target[n, best])},
                {"n": n, "k": worst, "target": float(target[n, worst])},
            ]
    else:  # every sample: the expectation over y ~ pi_t of eq. 5.3
        for n, g in enumerate(generations):
            rows.append(
                {
                    "prompt_index": n,
                    "prompt": g["prompt"],
                    "responses": g["responses"],
                    "scores": opponent[n].tolist(),
                    "targets": target[n].tolist(),
                }
            )
            train += [{"n": n, "k": k, "target": float(target[n, k])} for k in range(len(g["responses"]))]
    return rows, train


def optimise(
    policy,
    recipe: GpoRecipe,
    prompt_ids: list[list[int]],
    generations: list[dict],
    train: list[dict],
    t: int,
    engine,
    runlog: RunLog,
    stop,
    state_dir: Path,
) -> tuple[dict, dict | None]:
    """Minimise the squared loss of eq. 5.3 over `train` with gpmctl.train.loop.fit; the reference pi_{t-1} is the
    policy as given.

    Each optimizer step takes train.batch_size x grad_accum x processes sequences (every process its own
    share, as train-rm). The optimisation is checkpointed in `state_dir` every `train.save_steps` steps and
    on a stop signal, and continues from such a checkpoint (after computing the reference log-probs from
    pi_{t-1}). Returns (stats, the trained weights gathered from sharded ranks, or None)."""
    from gpmctl.data.batches import epoch_batches
    from gpmctl.train import checkpoint as ckpt
    from gpmctl.train.loop import Step, fit
    from gpmctl.train.optim import build_optimizer, build_schedule
    from gpmctl.train.progress import TrainProgress

    c, o = recipe.train, recipe.objective
    device = engine.device
    prompts = [prompt_ids[r["n"]] for r in train]
    responses = [generations[r["n"]]["response_ids"][r["k"]][: max(c.max_length - len(prompt_ids[r["n"]]), 1)] for r in train]
    targets = torch.tensor([r["target"] for r in train], dtype=torch.float32)

    # log pi_{t-1}(y|x) once, before any update (the reference needs no second model in memory); the
    # sequences are dealt over the processes and every process gets all of them.
    policy.eval()

    @torch.no_grad()
    def reference(rows: list[int], _: int) -> list[tuple[float, int]]:
        with engine.autocast():  # the precision of the training forward, so the log-ratio starts at 0
            lp, n = sequence_logps(policy, [prompts[i] for i in rows], [responses[i] for i in rows], device)
        return list(zip(lp.float().cpu().tolist(), n.cpu().tolist()))

    ref = engine.shard_map(list(range(len(train))), reference, c.batch_size)
    ref_logp = torch.tensor([lp for lp, _ in ref], dtype=torch.float32)
    length = torch.tensor([n for _, n in ref])

    def all_batches(epoch: int) -> list[list[int]]:  # this process's micro-batches: a permutation per (seed, t, epoch)
        return epoch_batches(len(train), c.batch_size, c.seed, 1009 * t + epoch, engine.rank, engine.world)

    micro_per_epoch = len(all_batches(0))
    if micro_per_epoch < c.grad_accum:
        raise ConfigError(
            f"train.batch_size x train.grad_accum x processes exceeds the {len(train)} training sequences of iteration {t}"
        )
    total = max(1, math.ceil(c.epochs * micro_per_epoch / c.grad_accum))
    optimizer = build_optimizer(policy, c)
    scheduler = build_schedule(optimizer, c, total)
    model, optimizer = engine.prepare(policy, optimizer)
    layout = engine.layout(c.batch_size, c.grad_accum)
    state = {"step": 0, "epoch": 0, "micro_batch": 0}
    if (state_dir / "trainer_state.json").is_file():
        try:
            saved = ckpt.read_trainer_state(state_dir)
            engine.check_resumable(saved, layout, state_dir)
            saved = engine.load_state(state_dir, model, optimizer, scheduler)
        except (ConfigError, ckpt.UnreadableCheckpoint, KeyError) as e:
            log(f"iteration {t}: {first_line(e)}: training the iteration again from its saved generations")
        else:
            state = {k: saved[k] for k in state}
            state["micro_batch"] = state["micro_batch"] // saved.get("grad_accum", c.grad_accum) * c.grad_accum
            log(f"iteration {t}: continuing the optimisation from step {state['step']} ({state_dir})")

    def step(index: list[int]) -> Step:
        logp, _ = sequence_logps(model, [prompts[i] for i in index], [responses[i] for i in index], device)
        lens = length[index].to(device) if o.length_norm else None
        ratio = L.log_ratio(logp, ref_logp[index].to(device), lens, o.length_gamma)  # log pi_theta/pi_t (/|y|^gamma: App. E.2)
        loss = L.squared_loss(ratio, targets[index].to(device))  # (ratio - (1/beta) s_hat)^2, eq. 5.3
        return Step(loss, {"loss": loss.detach(), "ratio": ratio.detach().sum(), "sequences": len(index)})

    def report(window: dict) -> None:
        record = {
            "event": "train",
            "iteration": t,
            "step": window["step"],
            "epoch": window["epoch"],
            "loss": window["loss"] / window["micro_batches"],
            "lr": window["lr"],
            "grad_norm": window["grad_norm"],
            "ratio_mean": window["ratio"] / window["sequences"],
            "sequences_per_s": window["sequences"] / window["seconds"],
        }
        runlog.write(record)
        progress.report(record)  # the bar on a terminal, else a plain line (a batch job's log)

    def checkpoint(reason: str) -> str:
        engine.save_state(state_dir, model, optimizer, scheduler, {**state, **layout})
        return f"iteration {t} checkpointed in {state_dir}; --resume auto continues from this step"

    started = time.perf_counter()
    with TrainProgress(total, state["step"], engine.is_main, unit="sequences") as progress:
        fit(
            engine,
            model,
            optimizer,
            scheduler,
            batches=lambda epoch: all_batches(epoch)[: micro_per_epoch // c.grad_accum * c.grad_accum],
            step=step,
            state=state,
            total_steps=total,
            max_grad_norm=c.max_grad_norm,
            logging_steps=c.logging_steps,
            report=report,
            save_steps=c.save_steps,
            checkpoint=checkpoint,
            stop=stop,
            progress=progress,
        )
    gathered = engine.full_state_dict(model)  # a collective: every rank
    engine.free_memory()
    policy.eval()
    stats = {
        "steps": state["step"],
        "train_seconds": round(time.perf_counter() - started, 2),
        "sequences": len(train),
        "target_abs_mean": float(targets.abs().mean()),
        "processes": engine.world,
    }
    return stats, gathered


def warmup_cyclic(model, tokenizer, prompt_ids: list[list[int]], cfg, seed: int, device) -> dict:
    """Supervised warm-up of the tiny policy (gpmctl.train.loop.fit on plain torch in this process): SFT on
    (prompt -> item word + end-of-turn), item words drawn by `cfg.item_weights`, which gives pi_0 a known,
    full-support distribution over the cyclic items. Returns {"loss": the per-token NLL of the last steps}."""
    import random

    from gpmctl.config import OptimConfig
    from gpmctl.data.cyclic import ITEM_WORDS
    from gpmctl.engine import Engine
    from gpmctl.models.policy import stop_token_ids
    from gpmctl.train.loop import Step, fit
    from gpmctl.train.optim import build_optimizer, build_schedule

    words = ITEM_WORDS[: cfg.num_items]
    weights = list(cfg.item_weights or [1.0] * cfg.num_items)
    end = tokenizer.get_vocab().get("<|im_end|>", stop_token_ids(tokenizer, model)[0])
    answers = [tokenizer(w, add_special_tokens=False)["input_ids"] + [end] for w in words]
    rng = random.Random(seed)
    draws = []
    for _ in range(cfg.steps):  # (prompts, answers) of each step, drawn in the order of the original loop
        batch_prompts = [rng.choice(prompt_ids) for _ in range(cfg.batch_size)]
        draws.append((batch_prompts, [answers[i] for i in rng.choices(range(len(words)), weights=weights, k=cfg.batch_size)]))
    optim = OptimConfig(
        lr=cfg.lr, optimizer="adamw", adam_betas=(0.9, 0.999), weight_decay=0.0, scheduler="constant", warmup_ratio=0.0
    )
    optimizer = build_optimizer(model, optim)
    scheduler = build_schedule(optimizer, optim, cfg.steps)
    last = {"loss": float("nan")}

    def step(draw: tuple) -> Step:
        logp, length = sequence_logps(model, draw[0], draw[1], device)
        loss = -(logp / length).mean()  # per-token NLL: the answers differ in token count
        return Step(loss, {"loss": loss.detach()})

    def report(window: dict) -> None:
        last["loss"] = window["loss"] / window["micro_batches"]
        log(f"warm-up step {window['step']}/{cfg.steps}: loss {last['loss']:.4f}")

    fit(
        Engine.local(device=device),
        model,
        optimizer,
        scheduler,
        batches=lambda epoch: draws,
        step=step,
        state={"step": 0, "epoch": 0, "micro_batch": 0},
        total_steps=cfg.steps,
        max_grad_norm=1.0,
        logging_steps=50,
        report=report,
    )
    model.eval()
    return last


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
    parallel through the engine (gpmctl.engine), and process 0 alone writes files."""
    from gpmctl.engine import Engine
    from gpmctl.train.loop import StopFlag

    quiet_libraries()
    output_dir = output_folder(recipe.output_dir, getattr(recipe, "source", "recipe"))
    c, g, pc = recipe.train, recipe.generation, recipe.policy
    # the inputs first: a bad prompt file or a resume with other settings stops before anything is written
    train_prompts = _prompts(recipe, "data.train", recipe.data.train, recipe.data.max_prompts)
    eval_prompts = _prompts(recipe, "data.eval", recipe.data.eval, recipe.data.max_eval_prompts) if recipe.data.eval else []
    settings = _saved_settings(recipe, train_prompts, eval_prompts)
    engine = Engine.create(c.precision, c.grad_accum, c.batch_size, c.max_grad_norm, getattr(recipe, "source", "recipe"))
    main, device = engine.is_main, engine.device
    _prepare_output(output_dir, resume, overwrite, main)
    engine.wait()
    _check_resume(output_dir, recipe, settings)
    judge_path = ensure_judge(recipe.judge) if recipe.judge.url is None else None
    ej = recipe.eval.judge  # the independent judge of the held-out win rates, if any
    has_eval_judge = bool(eval_prompts) and (ej.model is not None or ej.url is not None)
    eval_judge_path = ensure_judge(ej, "eval.judge") if has_eval_judge and ej.url is None else None

    def write(path: Path, rows: list[dict]) -> None:  # process 0 writes; the others wait until it is there
        if main:
            if path.name in settings:  # its settings first, so a saved file always has them beside it
                atomic_write_text(_settings_path(path), json_text(settings[path.name], indent=2))
            _write_jsonl(path, rows)
        engine.wait()

    from gpmctl.train.checkpoint import open_run_folder

    runlog = open_run_folder(engine, output_dir, recipe)

    source = getattr(recipe, "source", "recipe")
    judge = open_judge(recipe.judge, judge_path, engine, f"{source}: judge")
    tau, kind = judge.tau, judge.kind
    log(
        f"judge: {recipe.judge.url or judge_path} ({kind}, dim {judge.head.dim}, "
        f"tau {tau}{', each prompt once per K' if judge.share_prompt else ''}); "
        f"{engine.world} process(es), {engine.precision}, {engine.describe()}"
    )
    eval_judge = open_judge(ej, eval_judge_path, engine, f"{source}: eval.judge") if has_eval_judge else None
    if eval_judge is not None:
        log(f"eval.judge: {ej.url or eval_judge_path} ({eval_judge.kind}, tau {eval_judge.tau}): held-out win rates only")

    tokenizer = policy_tokenizer(pc.tokenizer or pc.model, pc.trust_remote_code)
    encode = lambda ps: [encode_prompt(tokenizer, p, recipe.data.max_prompt_length) for p in ps]  # noqa: E731
    train_ids, eval_ids = encode(train_prompts), encode(eval_prompts)
    log(
        f"prompts: {len(train_prompts)} train, {len(eval_prompts)} held-out; K = {g.k}, {recipe.objective.iterations} iterations, loss {recipe.objective.loss}"
    )
    cyclic_items = pc.warmup.num_items if str(recipe.data.eval or "").startswith("cyclic:") else None
    eval_seeds = [g.seed * (p + 1) + EVAL_SEED_OFFSET for p in range(recipe.eval.samples)]

    # pi_t is sampled and then trained: float32 weights (the optimizer's), unless the engine keeps fp32 copies
    policy_dtype = engine.weights_dtype(pc.dtype)

    def load(t: int):
        path = str(_iteration_dir(output_dir, t) / "policy")
        return engine.build(lambda: load_policy(path, policy_dtype, device, pc.attn_implementation, pc.trust_remote_code))

    def eval_samples(t: int, policy=None) -> list[dict]:
        """Held-out samples of pi_t (generated once, then read from iter-t/eval_generations.jsonl): its rows."""
        path = _iteration_dir(output_dir, t) / "eval_generations.jsonl"
        if not path.is_file():
            samples = sample(policy if policy is not None else load(t), tokenizer, eval_ids, eval_seeds, g, engine)
            write(path, _generation_rows(eval_prompts, samples))
        return _read_jsonl(path)

    def texts(rows: list[dict]) -> list[list[str]]:
        return [row["responses"] for row in rows]

    # 0. pi_0
    it0 = _iteration_dir(output_dir, 0)
    if main and not (it0 / "policy" / "config.json").is_file():
        it0.mkdir(exist_ok=True)
        if pc.model == "tiny":
            policy = engine.build(lambda: build_tiny_policy(tokenizer, pc.tiny, c.seed, pc.attn_implementation)).to(device)
            if pc.warmup.steps:
                stats = warmup_cyclic(policy, tokenizer, train_ids, pc.warmup, c.seed, device)
                runlog.write({"event": "warmup", **stats})
                log(f"pi_0: tiny policy warmed up on cyclic item words ({pc.warmup.steps} steps, loss {stats['loss']:.4f})")
        else:
            policy = engine.build(lambda: load_policy(pc.model, pc.dtype, device, pc.attn_implementation, pc.trust_remote_code))
        save_policy(policy, tokenizer, it0 / "policy")
    engine.wait()
    initial_rows = eval_samples(0) if eval_prompts else None
    initial_eval = texts(initial_rows) if eval_prompts else None
    initial = {"eval_" + k: v for k, v in response_tokens(initial_rows).items()} if eval_prompts else {}
    if initial:
        log(
            f"pi_0: held-out responses {initial['eval_mean_tokens']:.1f} tokens on average ({initial['eval_finished']:.0%} finished)"
        )

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
            seconds = {}  # per stage of this start of the iteration (a stage whose output was saved earlier: ~0)
            policy = load(t - 1)
            if pc.gradient_checkpointing:
                policy.gradient_checkpointing_enable()

            # 1. K samples per prompt from pi_{t-1}
            gen_path = d / "generations.jsonl"
            stage = time.perf_counter()
            if gen_path.is_file():
                log(f"iteration {t}: reusing {gen_path}")
            else:
                seeds = [g.seed * (p + 1) + 1_000_003 * t for p in range(g.k)]
                write(gen_path, _generation_rows(train_prompts, sample(policy, tokenizer, train_ids, seeds, g, engine)))
            generations = _read_jsonl(gen_path)
            seconds["generation"] = round(time.perf_counter() - stage, 2)
            _stop_between_stages(stop, t, "generation", engine)

            # 2. the K x K table: K judge forwards per prompt
            score_path = d / "scores.jsonl"
            stage = time.perf_counter()
            if score_path.is_file():
                raw = torch.tensor([row["raw"] for row in _read_jsonl(score_path)], dtype=torch.float64)
            else:
                raw = judge_scores(judge, train_prompts, [row["responses"] for row in generations], engine)
                logit = raw / tau
                write(
                    score_path,
                    [
                        {
                            "prompt_index": n,
                            "kind": kind,
                            "tau": tau,
                            "raw": raw[n].tolist(),
                            "logit": logit[n].tolist(),
                            "win_rate": torch.sigmoid(logit[n]).mean(-1).tolist(),
                        }
                        for n in range(len(generations))
                    ],
                )
            seconds["scoring"] = round(time.perf_counter() - stage, 2)
            _stop_between_stages(stop, t, "scoring", engine)

            # 3. targets and training sequences (recomputed from the table: switching the loss needs no new samples)
            pair_rows, train = build_training_set(recipe, generations, raw, tau, kind)
            write(d / "pairs.jsonl", pair_rows)

            # 4. optimise -> pi_t
            stage = time.perf_counter()
            stats, gathered = optimise(policy, recipe, train_ids, generations, train, t, engine, runlog, stop, d / "train_state")
            if main:
                save_policy(policy, tokenizer, d / "policy", state_dict=gathered)
                shutil.rmtree(d / "train_state", ignore_errors=True)
            engine.wait()
            if engine.shards_weights:  # the optimised copy is sharded: sample from the saved one
                policy = load(t)
            seconds["training"] = round(time.perf_counter() - stage, 2)

            # 5. held-out win rates (under the training judge and eval.judge), response lengths
            stage = time.perf_counter()
            metrics = {"iteration": t, "loss": recipe.objective.loss, **stats}
            metrics.update({"train_" + k: v for k, v in response_tokens(generations).items()})  # samples of pi_{t-1}
            if eval_prompts:
                new_rows = eval_samples(t, policy)
                new = texts(new_rows)
                previous = texts(eval_samples(t - 1)) if t > 1 else initial_eval
                metrics.update({"eval_" + k: v for k, v in response_tokens(new_rows).items()})
                metrics.update({f"initial_{k}": v for k, v in initial.items()})
                for prefix, j in (("", judge), ("eval_judge_", eval_judge)):
                    if j is None:
                        continue
                    against_initial = prompt_win_rates(j, eval_prompts, new, initial_eval, engine)
                    against_previous = against_initial if t == 1 else prompt_win_rates(j, eval_prompts, new, previous, engine)
                    metrics.update(win_rate_metrics(f"{prefix}win_rate_vs_initial", against_initial))
                    metrics.update(win_rate_metrics(f"{prefix}win_rate_vs_previous", against_previous))
                if cyclic_items:
                    metrics["true_win_rate_vs_initial"] = cyclic_win_rate(new, initial_eval, cyclic_items)
                    metrics["true_win_rate_vs_previous"] = cyclic_win_rate(new, previous, cyclic_items)
                    metrics["eval_items"] = _histogram(new)
            seconds["eval"] = round(time.perf_counter() - stage, 2)
            metrics["stage_seconds"] = seconds
            metrics["seconds"] = round(time.perf_counter() - started, 2)
            if main:
                (d / "metrics.json").write_text(json_text(metrics, indent=2))
            engine.wait()
            runlog.write({"event": "iteration", **metrics})
            shown = ", ".join(
                f"{k} {v:.3f}"
                for k, v in metrics.items()
                if k.startswith(("win_rate", "eval_judge_win", "true_win", "eval_mean_tokens"))
                and not k.endswith("_se")
                and v is not None
            )
            log(f"iteration {t}/{recipe.objective.iterations} ({recipe.objective.loss}): {shown} ({metrics['seconds']:.0f}s)")
            results.append(metrics)
            del policy

    final = _iteration_dir(output_dir, recipe.objective.iterations) / "policy"
    best = best_iteration(results, output_dir)
    if best is not None:
        log(
            f"best held-out policy: iteration {best['iteration']} (win rate vs pi_0 {best['win_rate_vs_initial']:.3f}), {best['policy']}"
        )
    summary = {
        "policy": str(final),
        "iterations": results,
        **({"initial": initial} if initial else {}),
        **({"best": best} if best else {}),
    }
    if main:
        (output_dir / "metrics.json").write_text(json_text(summary, indent=2))
    runlog.write({"event": "done", "policy": str(final), "best": best})
    runlog.close()
    engine.wait()
    return GpoResult(output_dir, final, results)


def best_iteration(results: list[dict], output_dir: Path) -> dict | None:
    """The iteration whose policy beat pi_0 most often on the held-out prompts (the first of equals): GPO's
    counterpart of train-rm's keep-best. Every iteration's policy stays in its folder; `policy` is the last."""
    scored = [r for r in results if r.get("win_rate_vs_initial") is not None]
    if not scored:
        return None
    best = max(scored, key=lambda r: r["win_rate_vs_initial"])
    policy = _iteration_dir(output_dir, best["iteration"]) / "policy"
    return {"iteration": best["iteration"], "policy": str(policy), "win_rate_vs_initial": best["win_rate_vs_initial"]}


def _stop_between_stages(stop, t: int, stage: str, engine) -> None:
    """SIGTERM / SIGUSR1 during a stage take effect once its output is saved (on every process alike)."""
    from gpmctl.train.loop import Preempted

    if engine.any_rank(stop.signal is not None):
        raise Preempted(
            f"stopped in iteration {t} after {stage} ({stop.signal or 'a signal to another rank'}); --resume auto continues from the saved files"
        )


def _histogram(samples: list[list[str]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in samples:
        for text in row:
            counts[text] = counts.get(text, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))
