import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from transfer.data.images import open_rgb
from transfer.data.transforms import EvalTransform, TrainTransform, normalize

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def random_image(w, h, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def ours(transform, img):
    return normalize(transform(img).unsqueeze(0), MEAN, STD)[0]  # HWC uint8 -> CHW float


@pytest.mark.parametrize("w, h", [(160, 160), (240, 160), (160, 213), (300, 200), (50, 37)])
@pytest.mark.parametrize("hflip", [True, False])
def test_train_transform_equals_torchvision(w, h, hflip):
    reference = T.Compose([T.Resize(160), T.RandomCrop(160, padding=4, padding_mode="reflect"),
                           *([T.RandomHorizontalFlip()] if hflip else []), T.ToTensor(), T.Normalize(MEAN, STD)])
    img = random_image(w, h)
    for seed in range(8):  # several draws: crops at the edges (reflection) and both flip outcomes
        torch.manual_seed(seed)
        expected, next_draw = reference(img), torch.rand(1)
        torch.manual_seed(seed)
        got, our_next_draw = ours(TrainTransform(160, hflip), img), torch.rand(1)
        assert got.shape == (3, 160, 160)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
        assert torch.equal(our_next_draw, next_draw)  # same RNG use, so later draws agree too


@pytest.mark.parametrize("w, h", [(160, 160), (240, 160), (160, 213), (301, 200)])
def test_eval_transform_keeps_aspect_and_equals_torchvision(w, h):
    reference = T.Compose([T.Resize(160), T.CenterCrop(160), T.ToTensor(), T.Normalize(MEAN, STD)])
    img = random_image(w, h)
    torch.testing.assert_close(ours(EvalTransform(160), img), reference(img), rtol=0, atol=1e-6)


def test_transforms_return_uint8_and_normalize_returns_channels_last():
    x = TrainTransform(32)(random_image(40, 40))
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
