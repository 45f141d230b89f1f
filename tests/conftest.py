"""Test-wide settings: never touch the network, keep library chatter out of the output."""

import os
import tempfile

for key, value in {
    "HF_HUB_OFFLINE": "1",  # a hub id fails at once instead of spending 23 s in retries
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "DS_ACCELERATOR": "cpu",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_DATASETS_CACHE": tempfile.mkdtemp(prefix="gpmctl-datasets-"),
}.items():
    os.environ.setdefault(key, value)
