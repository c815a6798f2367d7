import os
import sys
from pathlib import Path

import numpy as np
import pytest

# Test helper modules (tiny_models, clip_vocab) live beside the tests.
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def rel_err(ours, ref) -> float:
    """||ours - ref|| / ||ref|| in float64."""
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))


@pytest.fixture(scope="session")
def torch_threads():
    import torch

    torch.set_num_threads(2)
    return torch


@pytest.fixture(scope="session", params=["a", "b"])
def tiny_model_dir(request, tmp_path_factory, torch_threads):
    """A tiny random model folder (two different configs)."""
    from tiny_models import build

    return build(tmp_path_factory.mktemp(f"tiny_{request.param}"), request.param, seed=0)


@pytest.fixture(scope="session")
def tiny_a_dir(tmp_path_factory, torch_threads):
    from tiny_models import build

    return build(tmp_path_factory.mktemp("tiny_a_single"), "a", seed=1)


@pytest.fixture(scope="session")
def tiny_e2e_dir(tmp_path_factory, torch_threads):
    """Model "a" with attention sharp enough for clearly non-zero energies
    but not chaotic over a whole edit (tiny_models.build says why)."""
    from tiny_models import build

    return build(tmp_path_factory.mktemp("tiny_e2e"), "a", seed=1, qk_gain=2.0)
