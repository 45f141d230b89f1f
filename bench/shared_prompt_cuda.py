"""Shared-prompt rows on a GPU: values, gates, loss and gradients against today's padded batches, in fp32
(TF32 off: the tolerance of tests/test_shared_prompt.py, 2e-5 on values) and bf16 (differences reported),
on Llama-, Qwen2- and Gemma-3-shaped tiny configs; then `Scorer.embed` shared vs unshared for K = 4.

    python bench/shared_prompt_cuda.py            # needs CUDA; prints one line per check, exits 1 on a failure
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_packing import family_model  # noqa: E402
from test_shared_prompt import loss_and_grads, records  # noqa: E402

from gpmctl.data.tokenize import SequenceEncoder, collate_pairs  # noqa: E402
from gpmctl.models.embed import Scorer  # noqa: E402
from gpmctl.models.sources import load_tokenizer  # noqa: E402


def on(batch: dict, device: str) -> dict:
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}


def main() -> int:
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    tok = load_tokenizer("tiny")
    failures = 0
    for family in ("llama", "qwen2_window_4_from_layer_1", "gemma3_alternating_window_4"):
        for dtype, tol in ((torch.float32, 2e-5), (torch.bfloat16, None)):
            encoder = SequenceEncoder(tok, 512)
            pairs = [encoder.encode_pair(r) for r in records(6, seed=1)]
            model = family_model(family, vocab_size=len(tok)).to("cuda", dtype)
            ref_out, ref_loss, ref_grads = loss_and_grads(model, on(collate_pairs(pairs, tok.pad_token_id), "cuda"))
            model.enable_packing()
            out, loss, grads = loss_and_grads(
                model, on(collate_pairs(pairs, tok.pad_token_id, packed=True, share_prompt=True), "cuda")
            )
            value = (out.value - ref_out.value).abs().max().item()
            gate = (out.gate - ref_out.gate).abs().max().item()
            grad = max(((grads[n] - ref_grads[n]).abs().max() / ref_grads[n].abs().max().clamp(min=1e-12)).item() for n in grads)
            ok = tol is None or (value <= tol and gate <= tol and abs(loss - ref_loss).item() <= tol and grad <= 1e-3)
            failures += not ok
            print(
                f"{'ok  ' if ok else 'FAIL'} {family:<32} {str(dtype):<15} value {value:.1e} gate {gate:.1e} "
                f"loss {abs(loss - ref_loss).item():.1e} grad (rel. to max) {grad:.1e}"
            )
    model = family_model("qwen2", vocab_size=len(tok)).to("cuda")
    encoder = SequenceEncoder(tok, 512)
    recs = records(8, seed=3)
    prompts, responses = [r.prompt for r in recs], [[r.chosen, r.rejected, r.rejected, r.chosen] for r in recs]
    padded = Scorer(model, encoder, 6, "cuda", share_prompt=False).embed(prompts, responses)
    model.enable_packing()
    shared = Scorer(model, encoder, 6, "cuda", share_prompt=True).embed(prompts, responses)
    diff = max((shared[0] - padded[0]).abs().max().item(), (shared[1] - padded[1]).abs().max().item())
    failures += diff > 2e-5
    print(f"{'ok  ' if diff <= 2e-5 else 'FAIL'} Scorer.embed K=4 shared vs padded, fp32 cuda: {diff:.1e}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
