import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("STEPBENCH_DISABLE_PLUGIN_AUTOLOAD", "0")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def dist_group():
    """A one-process gloo group (FSDP2 needs one); CPU tests share it."""
    from core.trainer import init_distributed

    init_distributed("cpu")
    yield
