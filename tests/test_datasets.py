"""Data-set loaders on small files written in each data set's own format."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

import registry
from engine.datasets import images_to_points, read_off, sample_mesh


def test_digits_images_and_points():
    images = registry.get_dataset("digits")
    x, y = images.train[0]
    assert x.shape == (1, 8, 8) and images.num_classes == 10 and images.kind == "image"
    assert len(images.train) + len(images.test) == 1797
    points = registry.get_dataset("digits", input_kind="points")
    p, y2 = points.train[0]
    assert p.shape == (3, 64) and points.example_shape == (3, 64) and int(y2) == int(y)
    # x, y coordinates on the pixel grid in [-1, 1]; third channel is the pixel intensity
    assert p[0].min() == -1 and p[0].max() == 1 and p[1].min() == -1 and p[1].max() == 1
    torch.testing.assert_close(p[2], x.reshape(-1))


def test_images_to_points_layout():
    image = torch.zeros(1, 1, 2, 3)
    image[0, 0, 1, 2] = 0.5  # bottom-right pixel
    cloud = images_to_points(image)[0]
    assert cloud.shape == (3, 6)
    assert cloud[:, 5].tolist() == [1.0, -1.0, 0.5]
    assert cloud[:, 0].tolist() == [-1.0, 1.0, 0.0]


def _write_cifar(root, name: str, n_train: int = 6, n_test: int = 4):
    rng = np.random.default_rng(0)
    if name == "cifar10":
        folder, label_key = root / "cifar-10-batches-py", "labels"
        files = {f"data_batch_{i}": n_train for i in range(1, 6)} | {"test_batch": n_test}
    else:
        folder, label_key = root / "cifar-100-python", "fine_labels"
        files = {"train": n_train, "test": n_test}
    folder.mkdir(parents=True)
    written = {}
    for file, n in files.items():
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).tolist()
        with open(folder / file, "wb") as handle:
            pickle.dump({"data": data, label_key: labels}, handle)
        written[file] = (data, labels)
    return written


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_reads_python_batches(tmp_path, name):
    written = _write_cifar(tmp_path, name)
    bundle = registry.get_dataset(name, str(tmp_path), download=False)
    n_train = 30 if name == "cifar10" else 6
    assert len(bundle.train) == n_train and len(bundle.test) == 4
    assert bundle.num_classes == (10 if name == "cifar10" else 100)
    test_file = "test_batch" if name == "cifar10" else "test"
    data, labels = written[test_file]
    x, y = bundle.test[2]
    assert x.shape == (3, 32, 32) and int(y) == labels[2]
    # test images are not augmented: undo the normalisation and compare pixels (CHW row-major)
    from engine.datasets import CIFAR_MEAN, CIFAR_STD

    pixels = x * torch.tensor(CIFAR_STD[name]).view(3, 1, 1) + torch.tensor(CIFAR_MEAN[name]).view(3, 1, 1)
    np.testing.assert_allclose(pixels.numpy().reshape(-1) * 255, data[2].astype(np.float32), atol=1e-3)
    assert bundle.train[0][0].shape == (3, 32, 32)  # augmented crop keeps the size


class _Payload:
    """A pickle that would run a shell command when loaded by a plain unpickler."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar_batches_unpickle_only_numpy_arrays(tmp_path, protocol):
    """The original files are Python 2 pickles (protocol 2): they load; a batch naming anything but numpy's
    array constructors is refused with the file's path before that thing is imported or run."""
    from engine.datasets import _read_cifar_batch

    data = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    (tmp_path / "good").write_bytes(pickle.dumps({"data": data, "labels": [3, 7]}, protocol=protocol))
    images, labels = _read_cifar_batch(tmp_path / "good", "labels")
    assert images.shape == (2, 32, 32, 3) and labels.tolist() == [3, 7]
    np.testing.assert_array_equal(images[1].transpose(2, 0, 1).reshape(-1), data[1])
    marker = tmp_path / "ran"
    (tmp_path / "bad").write_bytes(pickle.dumps({"data": _Payload(marker), "labels": [0]}, protocol=protocol))
    with pytest.raises(ValueError, match=r"bad is not a CIFAR python-version batch .*posix\.system|bad is not a "
                                         r"CIFAR python-version batch .*os\.system"):
        _read_cifar_batch(tmp_path / "bad", "labels")
    assert not marker.exists()


def test_cifar_missing_names_dataroot(tmp_path):
    with pytest.raises(FileNotFoundError, match="--dataroot.*cifar-10-batches-py/data_batch_1"):
        registry.get_dataset("cifar10", str(tmp_path), download=False)


def test_modelnet40_h5(tmp_path):
    import h5py

    folder = tmp_path / "modelnet40_ply_hdf5_2048"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for split, count in (("train0", 5), ("train1", 3), ("test0", 4)):
        with h5py.File(folder / f"ply_data_{split}.h5", "w") as handle:
            handle["data"] = rng.standard_normal((count, 2048, 3)).astype(np.float32)
            handle["label"] = rng.integers(0, 40, size=(count, 1)).astype(np.uint8)
    bundle = registry.get_dataset("modelnet40", str(tmp_path), num_points=256)
    assert len(bundle.train) == 8 and len(bundle.test) == 4 and bundle.num_classes == 40
    x, y = bundle.test[1]
    assert x.shape == (3, 256) and bundle.kind == "points"
    with h5py.File(folder / "ply_data_test0.h5", "r") as handle:
        np.testing.assert_allclose(x.numpy(), handle["data"][1, :256].T)
        assert int(y) == int(handle["label"][1, 0])
    assert bundle.train[0][0].shape == (3, 256)
    with pytest.raises(ValueError, match="point-cloud|points"):
        registry.get_dataset("modelnet40", str(tmp_path), input_kind="image")


CUBE = """OFF
8 6 0
0 0 0
2 0 0
2 2 0
0 2 0
0 0 2
2 0 2
2 2 2
0 2 2
4 0 3 2 1
4 4 5 6 7
4 0 1 5 4
4 2 3 7 6
4 1 2 6 5
4 0 4 7 3
"""


def test_read_off_and_area_weighted_sampling(tmp_path):
    path = tmp_path / "cube.off"
    path.write_text(CUBE)
    vertices, triangles = read_off(path)
    assert vertices.shape == (8, 3) and triangles.shape == (12, 3)  # quads fanned into triangles
    points = sample_mesh(vertices, triangles, 500, seed=0)
    assert points.shape == (500, 3)
    # centred and scaled into the unit sphere; every point lies on a face of the cube
    assert np.linalg.norm(points, axis=1).max() == pytest.approx(1.0)
    lo, hi = points.min(axis=0), points.max(axis=0)
    on_face = np.isclose(points, lo, atol=1e-6) | np.isclose(points, hi, atol=1e-6)
    assert on_face.any(axis=1).all() and np.allclose(hi - lo, (hi - lo)[0], atol=1e-2)
    # the glued header variant of ModelNet40 ("OFF8 6 0")
    glued = tmp_path / "glued.off"
    glued.write_text(CUBE.replace("OFF\n8 6 0", "OFF8 6 0"))
    assert read_off(glued)[1].shape == (12, 3)


def test_sampling_is_area_weighted():
    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [10, 0, 0], [13, 0, 0], [10, 1, 0]], dtype=float)
    triangles = np.array([[0, 1, 2], [3, 4, 5]])  # areas 0.5 and 1.5
    points = sample_mesh(vertices, triangles, 4000, seed=1)
    # after centring, the big triangle's points are those on the right
    share = (points[:, 0] > points[:, 0].min() + (points[:, 0].max() - points[:, 0].min()) / 2).mean()
    assert share == pytest.approx(0.75, abs=0.03)


def test_modelnet40_off_meshes(tmp_path):
    for cls in ("airplane", "bed"):
        for split in ("train", "test"):
            folder = tmp_path / "ModelNet40" / cls / split
            folder.mkdir(parents=True)
            (folder / f"{cls}_0001.off").write_text(CUBE)
    bundle = registry.get_dataset("modelnet40", str(tmp_path), num_points=128)
    assert len(bundle.train) == 2 and len(bundle.test) == 2
    assert sorted(int(bundle.test[i][1]) for i in range(2)) == [0, 1]
    assert bundle.test[0][0].shape == (3, 128)


def test_modelnet40_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="--dataroot.*ply_data"):
        registry.get_dataset("modelnet40", str(tmp_path))


def write_image_folder(root, classes=("n01", "n02"), per_class=(3, 2), size=20) -> None:
    """A tiny ILSVRC-style train/ and val/ tree of PNGs."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in zip(("train", "val"), per_class):
        for cls in classes:
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 256, size=(size, size + 4, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{cls}_{i}.png")


def test_imagenet_folders(tmp_path):
    write_image_folder(tmp_path)
    bundle = registry.get_dataset("imagenet", str(tmp_path), image_size=16)
    assert bundle.num_classes == 2 and len(bundle.train) == 6 and len(bundle.test) == 4
    x, y = bundle.test[3]
    assert x.shape == (3, 16, 16) and int(y) == 1
    assert bundle.train[0][0].shape == (3, 16, 16)


def test_imagenet_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="--dataroot.*train/<class>"):
        registry.get_dataset("imagenet", str(tmp_path))


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ValueError, match="cifar10.*digits"):
        registry.get_dataset("mnist")
