"""The policy side of GPO: build / load / save a causal LM, encode prompts, sample K responses, and
sum response-token log-probs. Token ids of generations are kept as generated (never re-tokenised),
so the log-probs in training are those of the sequences the policy actually drew.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from gpmctl.errors import ModelError
from gpmctl.models.build import resolve_dtype, tiny_backbone
from gpmctl.models.sources import TINY, load_tokenizer, offline_hint, quiet_call, refuse_pickles, resolve_source
from gpmctl.utils import first_line

STOP_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>")  # end-of-turn markers of common chat templates


@dataclass
class Sample:
    """One generated response: token ids (stop token included when the policy emitted it) and text."""

    ids: list[int]
    text: str
    finished: bool


# ----------------------------------------------------------------------------------------------------
# Model folders


def build_tiny_policy(tokenizer, shape, seed: int, attn_implementation: str | None = "sdpa"):
    """A small Llama causal LM with the same config as the tiny reward-model backbone."""
    from transformers import AutoModelForCausalLM

    config = tiny_backbone(tokenizer, shape, seed, attn_implementation).config
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)


def load_policy(
    path: str,
    dtype: str | torch.dtype = "auto",
    device="cpu",
    attn_implementation: str | None = "sdpa",
    trust_remote_code: bool = False,
):
    from transformers import AutoModelForCausalLM

    path = resolve_source(path)  # package:NAME and gguf: sources, as a reward model's backbone
    if Path(path).is_dir():
        refuse_pickles(Path(path))
    kwargs = {
        "dtype": resolve_dtype(dtype, device),
        "trust_remote_code": trust_remote_code,
        "use_safetensors": True,
    }  # never unpickle
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = quiet_call(AutoModelForCausalLM.from_pretrained, path, **kwargs)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load a policy from {path!r}: {first_line(e)}{offline_hint(path)}") from e
    return model.to(device)


def save_policy(model, tokenizer, out_dir: Path, state_dict: dict | None = None) -> Path:
    """A standard Hugging Face causal-LM folder, written beside and renamed in when complete.
    `state_dict`: the weights to write instead of the model's own (gathered from the engine's shards)."""
    import shutil

    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir


def policy_tokenizer(name: str, trust_remote_code: bool = False):
    return load_tokenizer(TINY if name == TINY else name, trust_remote_code)


def stop_token_ids(tokenizer, model=None) -> list[int]:
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update([configured] if isinstance(configured, int) else configured or [])
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in STOP_TOKENS if t in vocab)
    return sorted(ids)


# ----------------------------------------------------------------------------------------------------
# Prompts


def read_prompts(spec: str, limit: int | None = None) -> list[list[dict]]:
    """Distinct prompts (message lists) of a source, in first-seen order.

    A jsonl file of `{"prompt": ...}` rows without answers is read directly; anything else goes
    through gpmctl.data.sources (preference files, cyclic:..., hub ids), keeping each record's prompt.
    """
    from gpmctl.data.files import file_rows

    path = Path(spec)
    rows = None
    if path.is_file() and path.suffix == ".jsonl":
        lines = list(file_rows(path))  # a line that is not UTF-8 or not JSON is one DataError naming it
        first = lines[0][1] if lines else None
        if isinstance(first, dict) and "prompt" in first and "chosen" not in first:
            rows = [_prompt_field(spec, number, row) for number, row in lines]
    if rows is None:
        from gpmctl.data.formats import ReadOptions
        from gpmctl.data.sources import read_source

        # only the prompts are read: an empty answer (HH-RLHF has some) does not make a prompt unusable
        rows = (r.prompt for r in read_source(spec, options=ReadOptions(allow_empty_responses=True)))
    seen, prompts = set(), []
    for prompt in rows:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
        key = json.dumps(messages, sort_keys=True)
        if key not in seen:
            seen.add(key)
            prompts.append(messages)
            if limit is not None and len(prompts) >= limit:
                break
    if not prompts:
        from gpmctl.errors import DataError

        raise DataError(spec, "no prompts")
    return prompts


def _prompt_field(spec: str, number: int, row) -> str | list:
    """The `prompt` of one row of a prompt file: a non-empty string or a list of {role, content} messages."""
    from gpmctl.errors import DataError

    prompt = row.get("prompt") if isinstance(row, dict) else None
    text = isinstance(prompt, str) and prompt.strip()
    messages = (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in prompt)
    )
    if not (text or messages):
        raise DataError(
            spec,
            f"expected a non-empty string or a list of {{role, content}} messages, got {prompt!r:.60}",
            line=number,
            field="prompt",
        )
    return prompt


def encode_prompt(tokenizer, messages: list[dict], max_length: int) -> list[int]:
    """Chat template with the generation prompt; keeps the last `max_length` tokens."""
    if tokenizer.chat_template:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        text = "\n".join(m["content"] for m in messages) + "\n"
    bos = tokenizer.bos_token
    ids = tokenizer(text, add_special_tokens=not (bos and text.startswith(bos)))["input_ids"]
    return ids[-max_length:]


# ----------------------------------------------------------------------------------------------------
# Sampling and log-probs


@torch.no_grad()
def generate(
    model, tokenizer, prompt_ids: list[list[int]], seeds: list[int], gen, device, first_batch: int = 0
) -> list[list[Sample]]:
    """len(seeds) samples per prompt -> [prompt][sample]. Prompts go in batches of `gen.batch_size`, left
    padded; sample p of batch b (counted from `first_batch`) is drawn after seeding with (seeds[p], b), so
    reruns give the same texts and so does a run whose batches are dealt over several processes."""
    was_training = model.training
    model.eval()
    stops = stop_token_ids(tokenizer, model)
    pad = tokenizer.pad_token_id
    out: list[list[Sample]] = [[] for _ in prompt_ids]
    for seed in seeds:
        for b, start in enumerate(range(0, len(prompt_ids), gen.batch_size), start=first_batch):
            torch.manual_seed(seed + 7_919 * b)
            chunk = prompt_ids[start : start + gen.batch_size]
            width = max(map(len, chunk))
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, seq in enumerate(chunk):
                ids[row, width - len(seq) :] = torch.tensor(seq)
                mask[row, width - len(seq) :] = 1
            new = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                do_sample=True,
                temperature=gen.temperature,
                top_p=gen.top_p,
                max_new_tokens=gen.max_new_tokens,
                eos_token_id=stops,
                pad_token_id=pad,
                synced_gpus=False,  # every process holds the sampler whole: no process waits for another
            )[:, width:].tolist()
            for row, seq in enumerate(new):
                end = next((i for i, tok in enumerate(seq) if tok in stops), None)
                kept = seq if end is None else seq[: end + 1]
                text = tokenizer.decode(kept, skip_special_tokens=True).strip()
                out[start + row].append(Sample(kept, text, end is not None))
    model.train(was_training)
    return out


def sequence_logps(model, prompts: list[list[int]], responses: list[list[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log pi(y|x) over response tokens and |y|, for aligned prompt / response ids -> ([B], [B]).

    One right-padded forward; logits at position i score token i + 1.
    """
    seqs = [p + r for p, r in zip(prompts, responses)]
    width = max(map(len, seqs))
    ids = torch.zeros((len(seqs), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    resp = torch.zeros_like(ids, dtype=torch.bool)
    for row, (p, r) in enumerate(zip(prompts, responses)):
        ids[row, : len(p) + len(r)] = torch.tensor(p + r)
        mask[row, : len(p) + len(r)] = 1
        resp[row, len(p) : len(p) + len(r)] = True
    ids, mask, resp = ids.to(device), mask.to(device), resp.to(device)
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    token_logp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    target_mask = resp[:, 1:]
    return (token_logp * target_mask).sum(-1), target_mask.sum(-1)
