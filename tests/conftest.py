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
    """A one-process group (FSDP2 needs one) that all tests share: gloo for CPU tensors, and
    NCCL for CUDA tensors where a GPU is present."""
    from core.trainer import init_distributed

    init_distributed("cuda" if torch.cuda.is_available() else "cpu")
    yield
