"""The small byte-level BPE tokenizer with a ChatML template that gpmctl ships for its tiny Llama.

The embedded default model must load without any hub access, so its tokenizer lives in the package
(gpmctl/assets/tiny-tokenizer). It is trained on a fixed built-in corpus: every word list of the
cyclic data set, sentences the cyclic generator renders, and a block of plain English, so both the
toy data and ordinary text split into sensible pieces.

Rebuild the shipped files with `python -m gpmctl.models.tiny_tokenizer [OUT_DIR]` after changing the
corpus (including the word lists or the generator in gpmctl/data/cyclic.py). The build is byte-for-byte
reproducible (the BPE trainer breaks count ties by pair id, so thread count does not matter: checked
with RAYON_NUM_THREADS=1..64 on tokenizers 0.23); tests/test_tiny_tokenizer.py compares the shipped
files with a fresh build. Another tokenizers release may serialise differently: then rebuild.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TINY_TOKENIZER_DIR: Path = Path(__file__).resolve().parent.parent / "assets" / "tiny-tokenizer"

VOCAB_SIZE = 1024
SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|eos|>", "<|im_start|>", "<|im_end|>"]  # ids 0..4 in this order
TOKENIZER_OPTIONS = {
    "bos_token": "<|bos|>",
    "eos_token": "<|eos|>",
    "pad_token": "<|pad|>",
    "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
    "model_max_length": 512,
}
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Plain English with digits and punctuation, so text outside the toy data tokenises sensibly too.
ENGLISH = """\
The quick brown fox jumps over the lazy dog. A good answer is short, clear and correct.
You are a helpful assistant. Please answer the question below in one or two sentences.
User: What is the capital of France? Assistant: The capital of France is Paris.
User: How many days are in a week? Assistant: There are 7 days in a week, and 52 weeks in a year.
Which answer do you prefer, A or B? I prefer answer A because it is more helpful and honest.
The model compares two responses to the same prompt and decides which one people would choose.
Some preferences are not transitive: rock beats scissors, scissors beat paper, paper beats rock.
In 2024 the team trained 3 models for 10 epochs with a learning rate of 0.0001 and a batch of 32.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 20 25 50 64 99 100 128 256 512 1000 1024 2048.
Prices went up by 12.5% last year; the report (page 4) says costs were $3,200 per month.
She said, "Thank you very much!" and he replied, "You're welcome; it was no trouble at all."
Write a function that returns the sum of a list. def add(a, b): return a + b  # simple example
if x > 0 and y < 10: print("yes") else: print("no")  [1, 2, 3] {"key": "value"} x = y * 2 - 1;
It was a bright cold day in April, and the clocks were striking thirteen.
Time flies like an arrow; fruit flies like a banana. Where there is a will, there is a way.
Please summarise the following article in three bullet points. First, second, third.
Good morning! How are you today? I am fine, thanks. What are you doing this weekend?
We walked to the park, sat under a tree and read a book while the children played.
Water boils at 100 degrees Celsius and freezes at 0 degrees at sea level.
The cat sat on the mat. The dog ran after the ball. Birds sing in the morning.
Explain why the sky is blue. Sunlight is scattered by the air, and blue light scatters the most.
Could you translate this sentence into French? Bonjour, je m'appelle Marie. Merci beaucoup.
Reward models score a response; a general preference model embeds it and compares embeddings.
Accuracy, loss, precision and recall are common metrics. The mean was 0.73 and the median 0.71.
Step 1: read the data. Step 2: train the model. Step 3: evaluate it on the held-out test set.
I don't know; maybe it's better to ask someone else. They'll know, won't they? Yes, we've checked.
The meeting is on Monday at 9:30 am in room 204. Don't be late - bring your notes, too.
Emails like name@example.com and links like https://example.org/path?q=1 appear in text.
Once upon a time there lived a king who had three daughters, each more clever than the last.
Tea or coffee? Coffee, please, with milk and no sugar. Breakfast is eggs, bread and fruit.
"""


def training_corpus() -> list[str]:
    """The fixed lines the BPE is trained on: word lists, rendered cyclic rows and plain English."""
    from gpmctl.data import cyclic

    word_lists = [cyclic.ITEM_WORDS, cyclic.OPENERS, cyclic.CONNECTORS, cyclic.ADJECTIVES, cyclic.TOPICS]
    lines = [" ".join(words) for words in word_lists] + list(cyclic.PROMPT_TEMPLATES)
    cfg = cyclic.CyclicConfig(
        num_prompts=200, num_items=len(cyclic.ITEM_WORDS), cycle_lengths=(3, 4, 6), seed=0, style="sentence"
    )
    train, _ = cyclic.generate_cyclic(cfg)
    # each row as the text between ChatML's special tokens, so the role names become single tokens
    lines += [f"user\n{r['prompt']}\nassistant\n{r['chosen']}\nassistant\n{r['rejected']}" for r in train]
    return lines + ENGLISH.splitlines()


def build_tiny_tokenizer(out_dir: str | Path) -> None:
    """Train the byte-level BPE on `training_corpus()` and save it as a transformers tokenizer folder.

    Deterministic: the same corpus gives the same tokenizer.json byte for byte (checked by the tests).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(training_corpus(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, chat_template=CHATML, **TOKENIZER_OPTIONS)
    tokenizer.save_pretrained(str(out_dir))
    # transformers 5 writes tokenizer_class "TokenizersBackend" and a list under "extra_special_tokens",
    # which transformers 4.x cannot load; these keys load the same tokenizer in both (checked on 4.56, 5.24)
    portable = {**TOKENIZER_OPTIONS, "tokenizer_class": "PreTrainedTokenizerFast"}
    config_text = json.dumps(portable, indent=2, sort_keys=True) + "\n"
    (Path(out_dir) / "tokenizer_config.json").write_text(config_text, encoding="utf-8")


def load_tiny_tokenizer():
    """The shipped tokenizer, padding on the left (as batched scoring of the last token wants)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(TINY_TOKENIZER_DIR), padding_side="left")


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else TINY_TOKENIZER_DIR
    build_tiny_tokenizer(out)
    print(f"wrote {out}", file=sys.stderr)
