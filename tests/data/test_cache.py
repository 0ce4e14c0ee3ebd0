"""The decoded in-memory cache with crops on the device gives the same pixels as the loader path."""
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_config
from transfer.data.cache import DecodedImages
from transfer.data.images import open_rgb
from transfer.data.transforms import Draws, EvalTransform, TrainTransform
from transfer.run import run


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from PIL import Image

    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("imgs")
    paths = []
    for k, (w, h) in enumerate([(40, 32), (32, 32), (32, 51), (64, 40), (33, 32), (50, 50)]):
        path = folder / f"{k}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


@pytest.mark.parametrize("hflip", [True, False])
def test_train_crops_equal_train_transform(images, hflip):
    cache = DecodedImages(images, list(range(len(images))), 32, "cpu")
    index = torch.tensor([3, 0, 5, 2, 2, 1, 4])
    draws = Draws(len(images))
    for seed in range(5):
        torch.manual_seed(seed)
        draws.redraw()
        expected = torch.stack([TrainTransform(32, hflip)(open_rgb(images[k]), draws[k]) for k in index.tolist()])
        assert torch.equal(cache.crops(index, draws[index], hflip=hflip), expected)
    edges = torch.tensor([[0.0, 0.0, 0.0], [1 - 1e-12, 1 - 1e-12, 0.9]], dtype=torch.float64).repeat(3, 1)[:len(images)]
    everything = torch.arange(len(images))
    expected = torch.stack([TrainTransform(32, hflip)(open_rgb(images[k]), edges[k]) for k in range(len(images))])
    assert torch.equal(cache.crops(everything, edges, hflip=hflip), expected)  # reflection at both edges


def test_eval_crops_equal_eval_transform(images):
    cache = DecodedImages(images, list(range(len(images))), 32, "cpu", num_workers=2)
    index = torch.arange(len(images))
    expected = torch.stack([EvalTransform(32)(open_rgb(p)) for p in images])
    assert torch.equal(cache.crops(index, None, hflip=True), expected)
    # each image once, resized so its short side is 32: (40, 32) stays, (64, 40) becomes (51, 32), ...
    import torchvision.transforms.functional as TF
    assert cache.nbytes == sum(np.asarray(TF.resize(open_rgb(p), 32)).size for p in images)


def test_a_kept_split_is_read_back_alike_and_a_changed_file_is_decoded_anew(images, tmp_path):
    import os
    import shutil

    from transfer.data.cache import STORED_PIXELS, fingerprint

    store = tmp_path / "store"
    first = DecodedImages(images, list(range(len(images))), 32, "cpu", store=store)
    again = DecodedImages(images, list(range(len(images))), 32, "cpu", store=store)
    assert not first.loaded and again.loaded and [p.name for p in store.iterdir()] == [fingerprint(images, 32)]
    index, draws = torch.arange(len(images)), Draws(len(images))
    draws.redraw()
    for d in (draws[index], None):
        assert torch.equal(first.crops(index, d), again.crops(index, d))
    assert torch.equal(first.offsets, again.offsets) and torch.equal(first.labels, again.labels)
    assert not DecodedImages(images, list(range(len(images))), 40, "cpu", store=store).loaded  # another size
    moved = tmp_path / "moved"
    moved.mkdir()
    copies = [shutil.copy(p, moved) for p in images]
    os.utime(copies[2], ns=(0, 0))  # same pixels, other files: not trusted to be the same images
    assert fingerprint(copies, 32) != fingerprint(images, 32)
    assert (store / fingerprint(images, 32) / STORED_PIXELS).stat().st_size == first.nbytes


@pytest.mark.slow  # two whole runs compared: the full tier
def test_cached_run_trains_exactly_like_the_loader_run(image_folder, tmp_path, capsys):
    # with mixup and cutmix on: both paths give the same crops, and the same mixed batches from them
    mixing = ("data.mixup=0.4", "data.cutmix=1.0", "train.label_smoothing=0.1")
    a = run(tiny_config(image_folder, tmp_path / "loader", "data.cache=none", *mixing))
    b = run(tiny_config(image_folder, tmp_path / "cached", "data.cache=memory", *mixing))
    capsys.readouterr()
    c = run(tiny_config(image_folder, tmp_path / "read_back", "data.cache=memory", *mixing))  # b's decoded images
    assert "read back 48 images" in capsys.readouterr().out
    assert a.objective == b.objective == {"label_smoothing": 0.1, "mixing": True}
    assert not a.decoded_cache and b.decoded_cache
    for folder in ("cached", "read_back"):
        wa = load_file(tmp_path / "loader" / "model" / "model.safetensors")
        wb = load_file(tmp_path / folder / "model" / "model.safetensors")
        assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a.history[-1].val_acc == b.history[-1].val_acc == c.history[-1].val_acc


@pytest.mark.slow
def test_compiled_model_trains_and_saves_a_plain_model(image_folder, tmp_path, monkeypatch):
    # reduce-overhead: CUDA graphs on a GPU; here (a CPU) it compiles as the default mode does. The
    # compiled run comes second in this process: it must not inherit the eager run's accelerate settings
    from transfer.training.model import load_saved_model

    from accelerate.utils import is_compiled_module

    from transfer.training import loop

    evaluated, evaluate = [], loop.evaluate
    monkeypatch.setattr(loop, "evaluate", lambda model, *a, **k: evaluated.append(model) or evaluate(model, *a, **k))
    eager = run(tiny_config(image_folder, tmp_path / "eager", "train.epochs=1"))
    metrics = run(tiny_config(image_folder, tmp_path / "compiled", "train.epochs=1", "train.compile=true",
                              "train.compile_mode=reduce-overhead"))
    assert len(evaluated) == 2 and not any(is_compiled_module(m) for m in evaluated)  # evaluation stays eager
    model, config = load_saved_model(tmp_path / "compiled" / "model")
    assert metrics.val_samples == 18 and config["num_classes"] == 3
    # the optimizer's step compiled too, its rates in tensors (no recompile as they move)
    assert metrics.speed_settings["compiled_optimizer"] and not eager.speed_settings["compiled_optimizer"]
    # the compiled step computes what the eager one does, up to inductor's order of the convolution and
    # batch-norm arithmetic (measured: 7e-4 in the training loss after these 6 steps, the optimizer's step
    # compiled or not; tests/training/test_model.py compares a compiled optimizer step alone, within 1e-5)
    for a, b in zip(eager.history, metrics.history):
        assert a.train_loss == pytest.approx(b.train_loss, abs=2e-3) and a.val_loss == pytest.approx(b.val_loss, abs=2e-3)


@pytest.mark.slow
def test_cache_and_loader_paths_crop_alike_with_persistent_workers(image_folder):
    # 2 loader workers, started once: the same pixels as the decoded cache, epoch after epoch
    from torch.utils.data import DataLoader

    from transfer.config import DataConfig
    from transfer.data.cache import CachedBatches, IndexDataset
    from transfer.data.loaders import DrawnLoader, build_datasets, samples
    from transfer.data.transforms import collate

    train, _, _, _ = build_datasets(DataConfig(root=str(image_folder), url=None, image_size=32, num_workers=2))
    loader = DrawnLoader(DataLoader(train, batch_size=8, num_workers=2, persistent_workers=True, collate_fn=collate),
                         train)
    _, stored, labels = samples(train)
    cached = CachedBatches(DataLoader(IndexDataset(len(train)), batch_size=8), DecodedImages(stored, labels, 32, "cpu"),
                           train.draws, hflip=True)
    pids, epochs = [], []
    for epoch in range(3):
        torch.manual_seed(100 + epoch)  # what the loop does at each epoch start (epoch_seed)
        ours = [b["pixel_values"] for b in loader]
        pids.append(sorted(w.pid for w in loader.loader._iterator._workers))
        torch.manual_seed(100 + epoch)
        theirs = [b["pixel_values"] for b in cached]
        assert len(ours) == len(theirs) and all(torch.equal(a, b) for a, b in zip(ours, theirs))
        epochs.append(torch.cat(ours))
    assert pids[0] == pids[1] == pids[2] and len(pids[0]) == 2  # the same two workers throughout
    assert not torch.equal(epochs[0], epochs[1])  # each epoch its own draws


def test_skipped_batches_of_the_cache_are_not_cropped_and_the_rest_are_as_ever(image_folder):
    from torch.utils.data import DataLoader

    from transfer.data.cache import CachedBatches, IndexDataset
    from transfer.data.transforms import Draws

    paths = sorted(str(p) for p in (image_folder / "train").rglob("*.png"))
    images, draws = DecodedImages(paths, [0] * len(paths), 32, "cpu"), Draws(len(paths))
    cached = CachedBatches(DataLoader(IndexDataset(len(paths)), batch_size=8), images, draws, hflip=True)
    torch.manual_seed(0)
    whole = list(cached)
    cropped, batch = [], images.batch
    images.batch = lambda *a: (cropped.append(1), batch(*a))[1]
    cached.skip_first(4)
    torch.manual_seed(0)
    resumed = list(cached)
    assert len(cropped) == len(whole) - 4 and [len(b["labels"]) for b in resumed] == [len(b["labels"]) for b in whole]
    assert all(b["pixel_values"].numel() == 0 and (b["labels"] == -1).all() for b in resumed[:4])
    assert all(torch.equal(a["pixel_values"], b["pixel_values"]) for a, b in zip(whole[4:], resumed[4:]))
    torch.manual_seed(0)
    assert len(list(cached)) == len(whole) and len(cropped) == 2 * len(whole) - 4  # the pass after skips nothing


def test_skip_marks_concern_the_loader_alone(image_folder):
    # samples.png (drawn in a child process while a resumed epoch's first batches are marked) decodes
    from transfer.config import DataConfig
    from transfer.data.loaders import build_datasets

    train, _, _, _ = build_datasets(DataConfig(root=str(image_folder), url=None, image_size=32))
    train.mark_skipped([[0, 1]])
    assert [e["labels"] for e in train.__getitems__([0, 1])] == [-1, -1]  # what a loader worker gets
    assert all(p.shape == (32, 32, 3) for p in train[[0, 1]]["pixel_values"])
    assert train.__getitems__([2, 3])[0]["pixel_values"].shape == (32, 32, 3)
