"""The model core every command shares.

preference.py  the paper's math: s(a > b) = <R(x) v_a, v_b>, the K x K matrix, the gate, the losses
heads.py       GPMHead and BTHead: settings (preference_head.json) + their pair score and K x K matrix
model.py       PreferenceModel in two stages: encode(tokens) -> Hidden, apply_head(Hidden) -> values, gates
packing.py     padding-free packed rows (per-sequence sdpa with each layer's own mask)
build.py       a model for training: backbone (tiny, folder, hub, package:, gguf:), LoRA, frozen / last-N layers
sources.py     where backbones and tokenizers come from (package:, gguf:, hub ids); pickles refused
io.py          model folders: save, check before loading, load (gpmctl and released-checkpoint layouts)
embed.py       K responses per prompt -> values, gates, K x K scores (score, eval, the GPO judge)
export.py      `gpmctl export`: a self-describing Hugging Face folder, or a BT sequence classifier
policy.py      the GPO policy: causal LM load/save, prompts, sampling, sequence log-probs
"""
