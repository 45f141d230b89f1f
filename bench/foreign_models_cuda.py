"""Other tools' reward models on a GPU: gpmctl's rewards vs transformers' own, in fp32 and bf16.

    python bench/foreign_models_cuda.py [--hidden 512 --layers 4]

A LlamaForSequenceClassification (num_labels 1) saved by plain transformers is scored by gpmctl
(`load_scorer`, dtype auto = bf16 on a bf16 GPU; padded and shared-prompt rows) and by transformers itself
(the chat template's tokens, one sequence at a time) in the same dtype; prints the largest difference and
the pair-order agreement. The CPU equivalent (fp32) is tests/test_foreign_models.py.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

PROMPTS = [f"Question {i}: which of these answers is the most helpful, and why?" for i in range(16)]
ANSWERS = [
    "A short answer.",
    "A longer answer that explains its reasoning in two sentences. It ends here.",
    "No.",
    "Maybe later.",
]


def main() -> None:
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from gpmctl.models.embed import load_scorer
    from gpmctl.models.sources import load_tokenizer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--device", default="cuda", help="cuda (the point), or cpu to check the script itself")
    args = parser.parse_args()
    tok = load_tokenizer("tiny")
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=args.hidden,
        intermediate_size=4 * args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=8,
        num_key_value_heads=4,
        num_labels=1,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    folder = Path(tempfile.mkdtemp()) / "rm"
    LlamaForSequenceClassification(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    messages = [[{"role": "user", "content": p}] for p in PROMPTS]
    responses = [[[{"role": "assistant", "content": a}] for a in ANSWERS] for _ in PROMPTS]
    for dtype in ("float32", "bfloat16"):
        reference = LlamaForSequenceClassification.from_pretrained(folder, dtype=getattr(torch, dtype)).to(args.device).eval()
        want = torch.zeros(len(PROMPTS), len(ANSWERS), dtype=torch.float64)
        with torch.no_grad():
            for i, prompt in enumerate(messages):
                for j, response in enumerate(responses[i]):
                    ids = tok.apply_chat_template(prompt + response, tokenize=True, return_dict=True, return_tensors="pt")
                    want[i, j] = reference(input_ids=ids["input_ids"].to(args.device)).logits[0, 0].double().cpu()
        for share in ("false", "true"):
            scorer = load_scorer(str(folder), batch_size=16, max_length=512, dtype=dtype, device=args.device, share_prompt=share)
            got, _ = scorer.embed(messages, responses)
            pairs = ~torch.eye(len(ANSWERS), dtype=torch.bool)  # i != j
            order = ((want[:, :, None] > want[:, None, :]) == (got[:, :, None] > got[:, None, :]))[:, pairs]
            print(
                f"{dtype:9s} share_prompt={share:5s}: max |gpmctl - transformers| = {(got - want).abs().max():.2e} "
                f"(reward scale {want.abs().mean():.2e}); pair order agrees {order.double().mean():.4f}"
            )


if __name__ == "__main__":
    main()
