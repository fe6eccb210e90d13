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
