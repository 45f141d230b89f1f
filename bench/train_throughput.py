"""Reward-model training throughput: gpmctl train-rm vs TRL's RewardTrainer, side by side.

    pip install -e '.[bench]'                          # TRL 1.16 (benchmark-only extra)
    python bench/train_throughput.py --quick           # 50M + tiny, short windows (about 25 min on 2 cores)
    python bench/train_throughput.py                   # longer windows (tiny 20+200, 50M 3+30 steps)
    python bench/train_throughput.py --models tiny --tcmalloc

Every contender runs in its own subprocess (so peak RSS is its own) on the same synthetic pairs, the
same backbone weights (a Llama built from config and saved once), the same global batch (8 pairs),
the same AdamW (lr 1e-5, betas 0.9/0.95, no weight decay, torch.optim.AdamW, clip 1.0, cosine with 3%
warm-up), fp32, BT loss. The gpmctl rows run `gpmctl.train.reward.train_reward_model`, the code
`gpmctl train-rm` runs, from a recipe; their timing comes from the wall-clock stamps of the per-step
records in its log.jsonl. TRL runs `RewardTrainer` with a callback stamping each step end. Both
windows span the same work: data collation, forward, backward, clipping, optimizer, schedule.
TRL reads the pairs in gpmctl's epoch order (sequential sampler), so the non-grouped rows train on
exactly the same batches and pairs/s compare directly; grouped rows see other batches, compare their
real (non-pad) tokens/s. Both render the pairs with the same chat template.

Data: prompt ~U[16,128] words, responses ~U[16,384] words, each word one token of the tiny
tokenizer (plus the chat template's tokens), as in ../shared/reference/trl_baseline.md.

Then GPM (dim 8, gate) against BT inside gpmctl (the head's overhead), and "at equal accuracy":
the tiny model trained by both on a learnable synthetic task for the same steps, with both final
held-out accuracies. `--tcmalloc` adds rows with tcmalloc preloaded (optional: gpmctl does not need it).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

TCMALLOC = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"
BATCH = 8
LR = 1e-5
SEED = 42
MODELS = {  # Llama shapes; "50m" is the baseline study's (49.2M parameters with vocab 8192)
    "tiny": dict(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128, vocab_size=1024
    ),
    "50m": dict(
        hidden_size=512,
        num_hidden_layers=14,
        num_attention_heads=8,
        num_key_value_heads=8,
        intermediate_size=1408,
        vocab_size=8192,
    ),
}
WINDOWS = {"quick": {"tiny": (10, 50), "50m": (3, 10)}, "full": {"tiny": (20, 200), "50m": (3, 30)}}
# contender -> (runner, gpmctl recipe overrides); see the module docstring for what each measures
CONTENDERS = {
    "trl": ("trl", []),
    "gpmctl_padded": ("gpmctl", ["train.packing=false"]),
    "gpmctl_padded_grouped": ("gpmctl", ["train.packing=false", "train.group_by_length=true"]),
    "gpmctl": ("gpmctl", []),  # the defaults: packing (auto), no grouping
    "gpmctl_gpm_gate": ("gpmctl", ["model.kind=gpm", "model.dim=8", "model.gate=true"]),
}
ACCURACY_TASK = {"pairs": 600, "eval_pairs": 200, "steps": 60, "lr": 1e-3}


# ----------------------------------------------------------------------------------------------------
# Shared inputs: the tokenizer's one-token words, the pairs, the model folders


def one_token_words(tokenizer) -> list[str]:
    """Words that are exactly one token each, at the start of a text or after a space."""
    words = set()
    for token_id in range(len(tokenizer)):
        w = tokenizer.decode([token_id]).strip()
        if w.isalpha() and len(tokenizer(f"{w} {w} {w}", add_special_tokens=False)["input_ids"]) == 3:
            words.add(w)
    return sorted(words)


def synthetic_pairs(words: list[str], n: int, seed: int, prompt=(16, 128), response=(16, 384), learnable=False) -> list[dict]:
    """TRL's conversational format, which gpmctl reads as is. `learnable`: chosen responses use the first
    half of the word list and rejected ones the second, a signal a reward model can pick up."""
    rng = random.Random(seed)
    half = len(words) // 2
    text = lambda lo, hi, pool: " ".join(rng.choice(pool) for _ in range(rng.randint(lo, hi)))  # noqa: E731
    good, bad = (words[:half], words[half:]) if learnable else (words, words)
    return [
        {
            "prompt": [{"role": "user", "content": text(*prompt, words)}],
            "chosen": [{"role": "assistant", "content": text(*response, good)}],
            "rejected": [{"role": "assistant", "content": text(*response, bad)}],
        }
        for _ in range(n)
    ]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def model_folder(workdir: Path, name: str) -> Path:
    """A Llama backbone built from config with fixed seed and saved with the tiny tokenizer, once."""
    folder = workdir / f"model_{name}"
    if not (folder / "config.json").exists():
        import torch
        from transformers import AutoModel, LlamaConfig

        from gpmctl.models.sources import load_tokenizer

        tok = load_tokenizer("tiny")
        config = LlamaConfig(
            **MODELS[name],
            max_position_embeddings=2048,
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            tie_word_embeddings=False,
        )
        torch.manual_seed(0)
        AutoModel.from_config(config).save_pretrained(folder)
        tok.save_pretrained(folder)
    return folder


def batch_order(n: int) -> list[int]:
    """gpmctl's epoch-0 order of the pairs, so TRL (sequential sampler) sees the same batches."""
    from gpmctl.data.batches import epoch_batches

    return [i for batch in epoch_batches(n, BATCH, SEED, 0) for i in batch]


# ----------------------------------------------------------------------------------------------------
# Workers: one contender per process; each prints one JSON line


def run_gpmctl(args, overrides: list[str]) -> dict:
    """`gpmctl train-rm` in process: the recipe below plus the contender's overrides."""
    from gpmctl.config import load_recipe
    from gpmctl.train.reward import train_reward_model

    out = Path(args.workdir) / f"run_{args.model}_{args.worker}_{os.getpid()}"
    recipe = load_recipe(
        None,
        [
            f"output_dir={out}",
            f"model.backbone={args.folder}",
            "model.kind=bt",
            f"data.train={args.data}",
            f"data.eval={args.eval_data or 'null'}",
            "data.max_length=1024",
            f"train.batch_size={BATCH}",
            "train.grad_accum=1",
            f"train.lr={args.lr}",
            f"train.max_steps={args.warmup + args.steps}",
            "train.logging_steps=1",
            "train.keep_best=false",
            "train.precision=fp32",
            f"train.seed={SEED}",
            "train.weight_decay=0",
            "train.warmup_ratio=0.03",
            f"train.eval_steps={10**9}",
            *overrides,
        ],
    )
    result = train_reward_model(recipe, overwrite=True)
    steps = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [r for r in steps if r["event"] == "train"]
    timed = steps[args.warmup :]
    seconds = timed[-1]["time"] - steps[args.warmup - 1]["time"]
    # Each record's window is one step: tokens = its tokens/s x its window length (pairs / pairs/s).
    tokens = sum(r["tokens_per_s"] * BATCH / r["pairs_per_s"] for r in timed)
    return {
        "seconds": seconds,
        "steps": len(timed),
        "pairs": BATCH * len(timed),
        "real_tokens": round(tokens),
        "eval_accuracy": result.final_metrics.get("accuracy"),
    }


def run_trl(args, _overrides) -> dict:
    import datasets
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl import RewardConfig, RewardTrainer
    from trl.trainer.reward_trainer import DataCollatorForPreference

    rows = [json.loads(line) for line in Path(args.data).read_text().splitlines()]
    rows = [rows[i] for i in batch_order(len(rows))]
    tok = AutoTokenizer.from_pretrained(args.folder)
    model = AutoModelForSequenceClassification.from_pretrained(
        args.folder, num_labels=1, dtype=torch.float32, attn_implementation="sdpa"
    )
    stamps, tokens = [], []

    class Stamp(TrainerCallback):
        def on_step_end(self, *_, **__):
            stamps.append(time.perf_counter())

    class CountingCollator(DataCollatorForPreference):
        """TRL's own collator, counting the real tokens of each batch."""

        def torch_call(self, examples):
            batch = super().torch_call(examples)
            tokens.append(int(batch["attention_mask"].sum()))
            return batch

    config = RewardConfig(
        output_dir=str(Path(args.workdir) / f"trl_{os.getpid()}"),
        per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=1,
        learning_rate=args.lr,
        lr_scheduler_type="cosine",
        warmup_steps=0.03,
        adam_beta2=0.95,
        weight_decay=0.0,
        optim="adamw_torch",
        max_grad_norm=1.0,
        bf16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        max_length=1024,
        max_steps=args.warmup + args.steps,
        train_sampling_strategy="sequential",
        logging_strategy="no",
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        seed=SEED,
        disable_tqdm=True,
    )
    trainer = RewardTrainer(
        model=model,
        args=config,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=tok,
        data_collator=CountingCollator(pad_token_id=tok.pad_token_id),
        callbacks=[Stamp()],
    )
    trainer.train()
    # The collator runs ahead of the step (prefetch): batch i belongs to step i.
    timed_tokens = sum(tokens[args.warmup : args.warmup + args.steps])
    result = {
        "seconds": stamps[-1] - stamps[args.warmup - 1],
        "steps": len(stamps) - args.warmup,
        "pairs": BATCH * (len(stamps) - args.warmup),
        "real_tokens": timed_tokens,
        "eval_accuracy": None,
    }
    if args.eval_data:
        result["eval_accuracy"] = trl_accuracy(trainer.model, tok, Path(args.eval_data))
    return result


def trl_accuracy(model, tok, path: Path) -> float:
    """Held-out pair accuracy of a sequence classifier (reward(chosen) > reward(rejected), ties wrong),
    rendering each pair with the chat template as TRL's training did."""
    import torch

    model.eval()
    correct = n = 0
    with torch.no_grad():
        for line in path.read_text().splitlines():
            row = json.loads(line)
            rewards = [
                model(
                    **tok(
                        tok.apply_chat_template(row["prompt"] + row[side], tokenize=False),
                        return_tensors="pt",
                        add_special_tokens=False,
                    )
                ).logits[0, 0]
                for side in ("chosen", "rejected")
            ]
            correct += int(rewards[0] > rewards[1])
            n += 1
    return correct / n


def worker(args) -> None:
    runner, overrides = CONTENDERS[args.worker]
    result = (run_trl if runner == "trl" else run_gpmctl)(args, overrides)
    result.update(
        contender=args.worker + ("_tcmalloc" if os.environ.get("LD_PRELOAD") else ""),
        model=args.model,
        peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        loadavg=os.getloadavg(),
    )
    print("RESULT " + json.dumps(result), flush=True)


# ----------------------------------------------------------------------------------------------------
# The driver


def spawn(args, model: str, contender: str, data: Path, warmup: int, steps: int, tcmalloc=False, eval_data=None, lr=LR) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        contender,
        "--model",
        model,
        "--folder",
        str(model_folder(Path(args.workdir), model)),
        "--data",
        str(data),
        "--workdir",
        args.workdir,
        "--warmup",
        str(warmup),
        "--steps",
        str(steps),
        "--lr",
        str(lr),
    ]
    if eval_data:
        cmd += ["--eval-data", str(eval_data)]
    env = {**os.environ, **({"LD_PRELOAD": TCMALLOC} if tcmalloc else {})}
    started = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        sys.exit(f"{contender} ({model}) failed:\n{proc.stderr[-3000:]}")
    result = json.loads(lines[-1][len("RESULT ") :])
    print(f"  {result['contender']:<24} {model:<5} done in {time.time() - started:.0f}s", file=sys.stderr, flush=True)
    return result


def table(rows: list[dict], reference: dict | None) -> str:
    """Markdown rows; the ratio columns compare with `reference` (TRL's row), "-" when TRL did not run."""
    head = "| contender | steps | pairs/s | real tok/s | s/step | peak RSS MiB | pairs/s vs TRL | tok/s vs TRL | load avg (1 min) |\n"
    head += "|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    lines = []
    for r in rows:
        pairs, tok = r["pairs"] / r["seconds"], r["real_tokens"] / r["seconds"]
        vs_pairs = vs_tok = "-"
        if reference is not None:
            vs_pairs = f"{pairs / (reference['pairs'] / reference['seconds']):.2f}x"
            vs_tok = f"{tok / (reference['real_tokens'] / reference['seconds']):.2f}x"
        lines.append(
            f"| {r['contender']} | {r['steps']} | {pairs:.2f} | {tok:,.0f} | {r['seconds'] / r['steps']:.3f} | "
            f"{r['peak_rss_mib']:,.0f} | {vs_pairs} | {vs_tok} | {r['loadavg'][0]:.2f} |"
        )
    return head + "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short timing windows (tiny 10+50, 50M 3+10 steps)")
    ap.add_argument("--models", default="tiny,50m", help="comma-separated: tiny, 50m")
    ap.add_argument("--contenders", default=",".join(CONTENDERS), help="comma-separated, from: " + ", ".join(CONTENDERS))
    ap.add_argument("--tcmalloc", action="store_true", help=f"also run TRL and gpmctl with LD_PRELOAD={TCMALLOC}")
    ap.add_argument("--skip-accuracy", action="store_true", help="skip the equal-accuracy comparison")
    ap.add_argument("--workdir", default="/tmp/gpmctl_bench_train", help="data, model folders and run folders")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    for hidden in ("--model", "--folder", "--data", "--eval-data"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    ap.add_argument("--warmup", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--lr", type=float, default=LR, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    from gpmctl.models.sources import load_tokenizer

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    words = one_token_words(load_tokenizer("tiny"))
    import torch

    print(
        f"# train throughput: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs, fp32, batch {BATCH} pairs, BT loss unless named\n"
    )
    contenders = args.contenders.split(",")
    tcmalloc = args.tcmalloc and Path(TCMALLOC).exists()
    if args.tcmalloc and not tcmalloc:
        print(f"(no {TCMALLOC}: tcmalloc rows skipped; apt-get install libtcmalloc-minimal4)\n")
    for model in args.models.split(","):
        warmup, steps = WINDOWS["quick" if args.quick else "full"][model]
        data = workdir / f"pairs_{model}.jsonl"
        write_jsonl(data, synthetic_pairs(words, BATCH * (warmup + steps), seed=1))
        rows = [spawn(args, model, c, data, warmup, steps) for c in contenders]
        if tcmalloc:
            rows += [spawn(args, model, c, data, warmup, steps, tcmalloc=True) for c in ("trl", "gpmctl") if c in contenders]
        print(f"## {model}: {warmup} warm-up + {steps} timed steps\n")
        print(table(rows, next((r for r in rows if r["contender"] == "trl"), None)) + "\n", flush=True)

    if not args.skip_accuracy:
        task = ACCURACY_TASK
        train, held = workdir / "learnable_train.jsonl", workdir / "learnable_eval.jsonl"
        write_jsonl(train, synthetic_pairs(words, task["pairs"], seed=2, prompt=(8, 32), response=(8, 64), learnable=True))
        write_jsonl(held, synthetic_pairs(words, task["eval_pairs"], seed=3, prompt=(8, 32), response=(8, 64), learnable=True))
        rows = [spawn(args, "tiny", c, train, 1, task["steps"] - 1, eval_data=held, lr=task["lr"]) for c in ("trl", "gpmctl")]
        print(
            f"## equal accuracy: tiny model, learnable task, {task['steps']} steps of {BATCH} pairs, lr {task['lr']}, "
            f"{task['eval_pairs']} held-out pairs\n"
        )
        print("| contender | held-out accuracy | pairs/s |\n|---|---:|---:|")
        for r in rows:
            print(f"| {r['contender']} | {r['eval_accuracy']:.3f} | {r['pairs'] / r['seconds']:.1f} |")


if __name__ == "__main__":
    main()
