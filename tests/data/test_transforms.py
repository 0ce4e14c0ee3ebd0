import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from transfer.data.images import open_rgb
import torchvision.transforms.functional as TF

from transfer.data.transforms import PAD, Draws, EvalTransform, TrainTransform, crop_start, normalize

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def random_image(w, h, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def ours(transform, img, draw=None):
    pixels = transform(img) if draw is None else transform(img, draw)
    return normalize(pixels.unsqueeze(0), MEAN, STD)[0]  # HWC uint8 -> CHW float


@pytest.mark.parametrize("w, h", [(160, 160), (240, 160), (160, 213), (300, 200), (50, 37)])
@pytest.mark.parametrize("hflip", [True, False])
def test_train_transform_equals_torchvision_at_the_same_draw(w, h, hflip):
    img = random_image(w, h)
    resized = TF.resize(img, 160)
    padded = TF.pad(resized, PAD, padding_mode="reflect")
    draws = torch.tensor([[0.0, 0.0, 0.2], [0.999999, 0.999999, 0.7], [0.5, 0.25, 0.49], [0.13, 0.87, 0.51]],
                         dtype=torch.float64)  # both edges (reflection), the middle, both flip outcomes
    for draw in draws:
        i = crop_start(float(draw[0]), padded.height, 160)
        j = crop_start(float(draw[1]), padded.width, 160)
        reference = TF.crop(padded, i, j, 160, 160)  # what RandomCrop does once it has drawn (i, j)
        if hflip and draw[2] < 0.5:
            reference = TF.hflip(reference)
        expected = TF.normalize(TF.to_tensor(reference), MEAN, STD)
        got = ours(TrainTransform(160, hflip), img, draw)
        assert got.shape == (3, 160, 160)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_crop_positions_cover_torchvisions_range_uniformly():
    padded, size = 168, 160  # RandomCrop(160, padding=4) of a 160-px side: positions 0 .. 8
    draws = Draws(90_000)
    torch.manual_seed(0)
    draws.redraw()
    positions = [crop_start(float(u), padded, size) for u in draws.table[:, 0]]
    counts = np.bincount(positions)
    assert len(counts) == padded - size + 1 and counts.min() > 0.95 * len(positions) / len(counts)
    assert crop_start(0.0, padded, size) == 0 and crop_start(1 - 1e-12, padded, size) == padded - size
    flips = (draws.table[:, 2] < 0.5).double().mean()
    assert abs(float(flips) - 0.5) < 0.01


def test_draws_follow_the_seed_and_are_shared_with_workers():
    draws = Draws(8)
    torch.manual_seed(3)
    draws.redraw()
    first = draws.table.clone()
    torch.manual_seed(3)
    draws.redraw()
    assert torch.equal(draws.table, first) and draws.table.is_shared()


@pytest.mark.parametrize("w, h", [(160, 160), (240, 160), (160, 213), (301, 200)])
def test_eval_transform_keeps_aspect_and_equals_torchvision(w, h):
    reference = T.Compose([T.Resize(160), T.CenterCrop(160), T.ToTensor(), T.Normalize(MEAN, STD)])
    img = random_image(w, h)
    torch.testing.assert_close(ours(EvalTransform(160), img), reference(img), rtol=0, atol=1e-6)


def test_transforms_return_uint8_and_normalize_returns_channels_last():
    x = TrainTransform(32)(random_image(40, 40), (0.5, 0.5, 0.5))
    assert x.dtype == torch.uint8 and x.shape == (32, 32, 3)
    batch = normalize(torch.stack([x, x]), MEAN, STD)
    assert batch.dtype == torch.float32 and batch.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "LA", "I;16"])
def test_any_image_mode_becomes_rgb(tmp_path, mode):
    path = tmp_path / f"img_{mode.replace(';', '')}.{'jpg' if mode == 'CMYK' else 'png'}"
    random_image(20, 20).convert(mode).save(path)
    img = open_rgb(str(path))
    assert img.mode == "RGB" and img.size == (20, 20)
    assert EvalTransform(16)(img).shape == (16, 16, 3)


def test_normalisation_constants_are_made_once_per_device_not_per_batch(monkeypatch):
    from transfer.data.transforms import Normalize

    normalize, made = Normalize(MEAN, STD), []
    for name in ("tensor", "as_tensor"):  # a tuple turned into a tensor; (a tensor passed through costs nothing)
        real = getattr(torch, name)
        monkeypatch.setattr(torch, name, lambda data, *a, real=real, **k: (
            made.append(1) if not isinstance(data, torch.Tensor) else None, real(data, *a, **k))[1])
    batch = torch.zeros(2, 8, 8, 3, dtype=torch.uint8)
    first = normalize(batch)
    for _ in range(3):
        assert torch.equal(normalize(batch), first)
    assert len(made) == 2  # the mean and the std, once
