"""Preference data: from files, the Hub and generators to tokenised batches.

records.py        PreferenceRecord: a prompt (messages), a chosen and a rejected continuation
fields.py         checks of one row's fields (one line naming file, line and field per problem)
formats.py        row formats (explicit, messages, hh-rlhf, implicit-text, gpm-custom), detection, ReadOptions
ultrafeedback.py  UltraFeedback rows: binarised or the paper's cyclic triples
files.py          reading (jsonl, jsonl.gz, json, csv, parquet, stdin) and writing data files
sources.py        recipe sources: files, folders, cyclic:, ultrafeedback:, Hub ids, mixtures
split.py          the one by-prompt held-out split
mix.py            the one mixing rule (recipe mixtures and `gpmctl data mix`)
responses.py      aligned response files, the input of `gpmctl score`
tokenize.py       text -> token ids (EOS rule, gate position, truncation), padded / packed collation
batches.py        each epoch's micro-batches (seeded order, length grouping)
cyclic.py         the deterministic intransitive data of the paper's Table 1
ops.py            the `gpmctl data` tools: validate, convert, stats, split, mix
"""
