"""vit/data.py: digits batches and the ImageNet folder loader (on a tiny generated image folder)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from vit.data import digits_data, digits_to_rgb, imagenet_data


def test_digits_batches_are_rgb_and_cover_the_test_split():
    data = digits_data(batch_size=100, calibration_batches=2)
    sizes = [y.numel() for _, y in data.batches]
    assert sum(sizes) == 450 and sizes[0] == 100
    x, _ = data.batches[0]
    assert x.shape[1:] == (3, 8, 8) and float(x.min()) >= -1 and float(x.max()) <= 1
    assert torch.equal(x[:, 0], x[:, 2])  # the grey image repeated on three channels
    assert len(data.calibration) == 2 and data.example.shape == (1, 3, 8, 8)
    assert torch.equal(digits_to_rgb(torch.ones(1, 1, 2, 2)), torch.ones(1, 3, 2, 2))


def _folder(root, split, classes=2, per_class=5, seed=0):
    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / split / f"n{c:02d}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray((rng.random((12, 14, 3)) * 255).astype("uint8")).save(folder / f"{i}.png")


def test_imagenet_folders_seeded_subset(tmp_path):
    _folder(tmp_path, "val")
    _folder(tmp_path, "train", seed=1)
    transform = transforms.Compose([transforms.CenterCrop(8), transforms.ToTensor()])
    data = imagenet_data(tmp_path, transform, batch_size=3, eval_batches=2, calibration_batches=1, workers=0, seed=1)
    first = [y.tolist() for _, y in data.batches]
    again = [y.tolist() for _, y in data.batches]
    assert first == again and [len(y) for y in first] == [3, 3]  # 6 of the 10 images, the same each pass
    assert data.example.shape == (1, 3, 8, 8) and data.timing_batch.shape == (3, 3, 8, 8)
    assert len(data.calibration) == 1 and data.calibration[0][0].shape == (3, 3, 8, 8)


def test_imagenet_missing_val_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="val"):
        imagenet_data(tmp_path, transforms.ToTensor())


def test_digits_calibration_images_come_from_the_training_split():
    from engine.digits import digits_tensors

    data = digits_data(batch_size=100, calib_size=256)
    stats = torch.cat(data.stats_batches)
    assert stats.shape == (256, 3, 8, 8) and [len(x) for x in data.stats_batches] == [100, 100, 56]
    x_train, _, x_test, _ = digits_tensors()
    train = {tuple(row.tolist()) for row in digits_to_rgb(x_train).flatten(1)}
    test = {tuple(row.tolist()) for row in digits_to_rgb(x_test).flatten(1)} - train
    rows = {tuple(row.tolist()) for row in stats.flatten(1)}
    assert rows <= train and not rows & test
    assert len({tuple(r.tolist()) for r in stats.flatten(1)}) > 200  # a shuffle, not one repeated image
    assert digits_data(batch_size=100).stats_batches == []
    with pytest.raises(ValueError, match="calib_size"):
        digits_data(calib_size=-1)


def test_imagenet_calibration_images_from_train_only(tmp_path):
    _folder(tmp_path, "val")
    transform = transforms.Compose([transforms.CenterCrop(8), transforms.ToTensor()])
    with pytest.raises(FileNotFoundError, match="train"):
        imagenet_data(tmp_path, transform, batch_size=3, eval_batches=1, workers=0, calib_size=4)
    _folder(tmp_path, "train", seed=1)
    data = imagenet_data(tmp_path, transform, batch_size=3, eval_batches=1, workers=0, calib_size=4)
    assert [len(x) for x in data.stats_batches] == [3, 1]
