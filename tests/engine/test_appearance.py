"""Tests of rna_engine/stages/appearance.py: sampling primitives, the descriptor test, DINO."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rna_engine.stages.appearance import (
    DescriptorAppearance,
    DinoAppearance,
    box_mean,
    inside,
    pixel_grid,
    sample_px,
)


def texture(h: int, w: int, seed: int, shift: tuple[float, float] = (0.0, 0.0)) -> torch.Tensor:
    """(1, 3, H, W) smooth random texture, sampled at x - shift (content moves by +shift)."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    xs, ys = xs - shift[0], ys - shift[1]
    out = np.zeros((3, h, w), np.float32)
    for c in range(3):
        for _ in range(20):
            f, a, p = rng.uniform(0.1, 0.4), rng.uniform(0, np.pi), rng.uniform(0, 6.3)
            out[c] += np.sin(f * (np.cos(a) * xs + np.sin(a) * ys) + p)
    return torch.from_numpy(np.clip(0.5 + 0.1 * out, 0, 1)).unsqueeze(0)


def constant_flow(h: int, w: int, dx: float, dy: float) -> torch.Tensor:
    flow = torch.empty(1, 2, h, w)
    flow[:, 0], flow[:, 1] = dx, dy
    return flow


DESCRIPTOR = DescriptorAppearance(radius_px=3, structure_floor=1e-3, colour_tolerance=0.1)


def test_sample_px_identity_and_pixel_centres() -> None:
    image = torch.arange(12, dtype=torch.float32).view(1, 1, 3, 4)
    grid = pixel_grid(3, 4, "cpu").unsqueeze(0)
    assert torch.equal(sample_px(image, grid), image)
    # halfway between columns 1 and 2 of row 2: the mean of 9 and 10
    xy = torch.tensor([1.5, 2.0]).view(1, 2, 1, 1)
    assert sample_px(image, xy).item() == pytest.approx(9.5)
    assert inside(torch.tensor([[[[3.0]], [[2.0]]]]), 3, 4).item()
    assert not inside(torch.tensor([[[[3.01]], [[2.0]]]]), 3, 4).item()


def test_box_mean_clips_windows_at_the_border() -> None:
    x = torch.arange(12, dtype=torch.float32).view(1, 1, 3, 4)
    out = box_mean(x, 1)[0, 0]
    assert out[1, 1].item() == pytest.approx(x[0, 0, :3, :3].mean().item())
    assert out[0, 0].item() == pytest.approx(x[0, 0, :2, :2].mean().item())  # 4 pixels, not 9
    assert out[2, 3].item() == pytest.approx(x[0, 0, 1:, 2:].mean().item())


def test_descriptor_scores_a_correct_match_high_and_wrong_ones_low() -> None:
    h, w = 40, 56
    a = texture(h, w, 0)
    b = texture(h, w, 0, shift=(2.5, -1.25))  # content moved by (2.5, -1.25)
    interior = (slice(6, -6), slice(6, -6))
    right = DESCRIPTOR.similarity(a, b, constant_flow(h, w, 2.5, -1.25))[0][interior]
    wrong = DESCRIPTOR.similarity(a, b, constant_flow(h, w, -3.0, 4.0))[0][interior]
    assert right.min() > 0.9
    assert (wrong < 0.5).float().mean() > 0.9
    # an occluder of another texture where b should show the surface
    other = texture(h, w, 7)
    occluded = DESCRIPTOR.similarity(a, other, constant_flow(h, w, 2.5, -1.25))[0][interior]
    assert (occluded < 0.5).float().mean() > 0.9


def test_descriptor_flat_patches_compare_by_colour() -> None:
    h, w = 16, 16
    grey = torch.full((1, 3, h, w), 0.4)
    zero = constant_flow(h, w, 0.0, 0.0)
    torch.testing.assert_close(
        DESCRIPTOR.similarity(grey, grey, zero), torch.ones(1, h, w), atol=1e-4, rtol=0
    )
    assert DESCRIPTOR.similarity(grey, grey + 0.3, zero).max() < 0.5
    # a mild brightness change of a textured surface is still the same surface
    a = texture(h, w, 3)
    assert DESCRIPTOR.similarity(a, a * 1.1, zero)[0, 4:-4, 4:-4].min() > 0.5
    # texture against a flat occluder of the same mean colour: structure says no
    flat = torch.full_like(a, 0.5)
    assert DESCRIPTOR.similarity(a, flat, zero)[0, 4:-4, 4:-4].max() < 0.5


def tiny_dino(model_type: str, patch: int = 4):
    transformers = pytest.importorskip("transformers")
    kwargs = dict(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        patch_size=patch,
        image_size=32,
    )
    torch.manual_seed(0)
    if model_type == "vit":
        return transformers.ViTModel(transformers.ViTConfig(**kwargs), add_pooling_layer=False)
    return transformers.Dinov2Model(transformers.Dinov2Config(**kwargs))


@pytest.mark.parametrize("model_type", ["vit", "dinov2"])
def test_dino_features_cover_the_frame_and_match_themselves(model_type: str) -> None:
    model = tiny_dino(model_type).eval()
    dino = DinoAppearance(model)
    frames = torch.cat([texture(24, 32, 0), texture(24, 32, 1)])
    feats = dino.features(frames)
    assert feats.shape == (2, 16, 6, 8)  # 24/4 × 32/4 tokens
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(2, 6, 8))
    same = dino.similarity(feats[:1], feats[:1], constant_flow(24, 32, 0.0, 0.0))
    torch.testing.assert_close(same, torch.ones(1, 24, 32))
    # the tokens are the model's: frame 0 against frame 1 is not all ones
    cross = dino.similarity(feats[:1], feats[1:], constant_flow(24, 32, 0.0, 0.0))
    assert cross.mean() < 0.99


def test_dino_token_grid_is_sampled_at_patch_centres() -> None:
    model = tiny_dino("dinov2").eval()
    dino = DinoAppearance(model)
    tokens = torch.zeros(1, 2, 2, 2)  # a 2×2 token grid over a 6×6 frame (3-pixel patches)
    tokens[0, 0, 0, 0] = 1.0  # token (row 0, col 0) points along channel 0
    tokens[0, 1, 0, 1] = 1.0  # token (row 0, col 1) along channel 1
    tokens[0, 0, 1, :] = 1.0  # both tokens of row 1 point along (1, 1)
    tokens[0, 1, 1, :] = 1.0
    # pixel (1, 1) is the centre of token (0, 0); the flow moves it to (4, 1), token (0, 1)
    sim = dino.similarity(tokens, tokens, constant_flow(6, 6, 3.0, 0.0))
    assert sim[0, 1, 1].item() == pytest.approx(0.0, abs=1e-5)  # orthogonal tokens
    assert sim[0, 4, 1].item() == pytest.approx(1.0, abs=1e-5)  # row 1: equal tokens
