"""Test-wide settings: never touch the network or the user's own configuration, keep library chatter out of the output."""

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

# A recipe that names no launch profile takes the default accelerate config (HF_HOME/accelerate/default_config.yaml):
# the developer's own (say, 8 GPUs) must not turn the tests into multi-process runs.
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="gpmctl-hf-home-")
