import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # tests/helpers

import pytest

from app.config import compose


@pytest.fixture
def make_cfg():
    """Compose the real shipped config with overrides, as `python -m app` would."""

    return compose


@pytest.fixture(scope="module")
def toy():
    """The embedded toy (PT model, IT model, tokenizer), float32, in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from app.config import TOY_DIR

    tok = AutoTokenizer.from_pretrained(TOY_DIR / "pt")
    pt = AutoModelForCausalLM.from_pretrained(TOY_DIR / "pt", dtype=torch.float32).eval()
    it = AutoModelForCausalLM.from_pretrained(TOY_DIR / "it", dtype=torch.float32).eval()
    return pt, it, tok
