"""The PyTorch twins (rna_engine/model/stmap_torch.py) equal rna_engine/media/stmap.py bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rna_engine.media import stmap
from rna_engine.model import stmap_torch

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[
            pytest.mark.gpu,
            pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
        ],
    ),
]


def _case(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 37×53 image, and 29×31 lookups reaching past every edge, some on exact pixel centres."""
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(37, 53, 2)).astype(np.float32)
    uv = rng.uniform(-0.1, 1.1, size=(29, 31, 2)).astype(np.float32)
    uv[0] = stmap.identity_stmap(37, 53)[0, :31]
    return image, uv


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("filt", stmap_torch.FILTERS)
def test_sample_stmap_is_bit_identical(device: str, filt: str) -> None:
    image, uv = _case()
    want = stmap.sample_stmap(image, uv, filt)
    got = stmap_torch.sample_stmap(
        torch.from_numpy(image).to(device), torch.from_numpy(uv).to(device), filt
    )
    assert got.dtype == torch.float32
    assert torch.equal(got.cpu(), torch.from_numpy(want))


@pytest.mark.parametrize("device", DEVICES)
def test_identity_impulse_returns_the_image(device: str) -> None:
    image = torch.arange(12, dtype=torch.float32).reshape(3, 4, 1).to(device)
    uv = torch.from_numpy(stmap.identity_stmap(3, 4)).to(device)
    assert torch.equal(stmap_torch.sample_stmap(image, uv, "impulse"), image)


@pytest.mark.parametrize("device", DEVICES)
def test_uv_norm_to_stmap_is_bit_identical(device: str) -> None:
    uv_norm = np.random.default_rng(1).uniform(-1.2, 1.2, size=(1000, 2)).astype(np.float32)
    uv_norm[0] = (-1.0, -1.0)
    want = stmap.uv_norm_to_stmap(uv_norm, 384, 216)
    got = stmap_torch.uv_norm_to_stmap(torch.from_numpy(uv_norm).to(device), 384, 216)
    assert got.dtype == torch.float64
    assert torch.equal(got.cpu(), torch.from_numpy(want))
    assert got[0].tolist() == [0.5 / 384, 1.0 - 0.5 / 216]


def test_bad_arguments_are_refused() -> None:
    image, uv = _case()
    with pytest.raises(ValueError, match="lanczos4"):
        stmap_torch.sample_stmap(torch.from_numpy(image), torch.from_numpy(uv), "lanczos4")
    with pytest.raises(ValueError, match="uv_stmap"):
        stmap_torch.sample_stmap(torch.from_numpy(image), torch.zeros(3, 4))
