"""Data sets of the Table 1 experiments: digits (embedded), CIFAR-10/100, ModelNet40, ImageNet.

``get_dataset(name, root)`` returns a :class:`DatasetBundle` (train/test datasets plus
what a model needs to know: classes, input channels, example input shape). Missing data
raises one ``FileNotFoundError`` naming ``--dataroot`` and the files expected there.

Point-cloud models on ``digits``: each 8x8 image becomes a cloud of its 64 pixels with
coordinates ``(x, y, intensity)``, ``x, y`` in ``[-1, 1]`` (``digits_points``). It keeps the
pipeline runnable offline; it is not a substitute for ModelNet40.
"""

from __future__ import annotations

import glob
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from engine.digits import digits_tensors

CIFAR_MEAN = {"cifar10": (0.4914, 0.4822, 0.4465), "cifar100": (0.5071, 0.4865, 0.4409)}
CIFAR_STD = {"cifar10": (0.2023, 0.1994, 0.2010), "cifar100": (0.2673, 0.2564, 0.2762)}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class DatasetBundle:
    """Train/test splits plus the input description a model and the FLOPs counter need.

    ``example_shape`` is one sample's shape: ``(C, H, W)`` for images, ``(3, N)`` for points.
    """

    name: str
    train: Dataset
    test: Dataset
    num_classes: int
    in_channels: int
    example_shape: tuple[int, ...]
    kind: str  # "image" or "points"

    @property
    def input_size(self) -> int:
        """Image side (images) or number of points (point clouds)."""
        return self.example_shape[-1]

    def example_inputs(self, batch: int = 1) -> torch.Tensor:
        """A random input batch ``(batch, *example_shape)`` for graph tracing and FLOPs counting."""
        return torch.randn(batch, *self.example_shape)


def _missing(root: str | os.PathLike, dataset: str, expected: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"{dataset} data not found under --dataroot {str(root)!r}: expected {expected}"
    )


# --------------------------------------------------------------------------- digits
def digits_images(root: str | os.PathLike = "data", input_kind: str = "image") -> DatasetBundle:
    """scikit-learn's 8x8 digits (fixed seeded split); ``input_kind="points"`` gives 64-pixel clouds."""
    x_tr, y_tr, x_te, y_te = digits_tensors()
    if input_kind == "points":
        return DatasetBundle("digits_points", TensorDataset(images_to_points(x_tr), y_tr),
                             TensorDataset(images_to_points(x_te), y_te), 10, 3, (3, 64), "points")
    return DatasetBundle("digits", TensorDataset(x_tr, y_tr), TensorDataset(x_te, y_te), 10, 1, (1, 8, 8), "image")


def images_to_points(images: torch.Tensor) -> torch.Tensor:
    """``(N, 1, H, W)`` grey images -> ``(N, 3, H*W)`` clouds of ``(x, y, intensity)`` per pixel."""
    n, _, h, w = images.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    x = (xs / (w - 1) * 2 - 1).reshape(1, -1).expand(n, -1)
    y = (1 - ys / (h - 1) * 2).reshape(1, -1).expand(n, -1)
    return torch.stack([x, y, images.reshape(n, -1)], dim=1).contiguous()


# --------------------------------------------------------------------------- CIFAR
class ImageTensorDataset(Dataset):
    """Images held as a uint8 tensor ``(N, H, W, C)`` with CIFAR-style augmentation on the fly.

    Training samples get a random crop (4-pixel zero padding) and a random horizontal flip;
    every sample is scaled to ``[0, 1]`` and normalised per channel.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, mean: tuple, std: tuple, train: bool) -> None:
        self.images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
        self.labels = torch.as_tensor(labels, dtype=torch.int64)
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)
        self.train = train

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index].float().div_(255.0)
        if self.train:
            _, h, w = image.shape
            padded = torch.nn.functional.pad(image, (4, 4, 4, 4))
            top, left = torch.randint(0, 9, (2,)).tolist()
            image = padded[:, top:top + h, left:left + w]
            if torch.rand(()) < 0.5:
                image = image.flip(-1)
        return (image - self.mean) / self.std, self.labels[index]


# What a CIFAR batch may reference: numpy arrays (as the original Python 2 files and numpy 1/2 pickle them) and
# latin-1 bytes. Anything else (a class or function a crafted file names) is refused before it is imported.
_CIFAR_PICKLE_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
})


class _CifarUnpickler(pickle.Unpickler):
    """Reads a CIFAR batch's pickle, resolving only :data:`_CIFAR_PICKLE_GLOBALS` (no arbitrary objects)."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _CIFAR_PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"it names {module}.{name}; a CIFAR batch holds only numpy arrays and lists")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    # The CIFAR "python version" files are pickled dicts by design of the data set itself: read with an
    # unpickler that resolves numpy's array constructors and nothing else.
    try:
        with open(path, "rb") as handle:
            entry = _CifarUnpickler(handle, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError) as err:
        raise ValueError(f"{path} is not a CIFAR python-version batch ({err}); expected the files of "
                         "cifar-10-python.tar.gz / cifar-100-python.tar.gz") from None
    data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return data, np.asarray(entry[label_key], dtype=np.int64)


CIFAR_LAYOUT = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels", 10),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels", 100),
}


def cifar(name: str, root: str | os.PathLike = "data", download: bool = True) -> DatasetBundle:
    """CIFAR-10/100 from the python-version batches under ``root`` (downloaded when reachable)."""
    folder, train_files, test_files, label_key, classes = CIFAR_LAYOUT[name]
    base = Path(root) / folder
    needed = [base / f for f in train_files + test_files]
    if not all(p.is_file() for p in needed) and download:
        created = not Path(root).exists()
        try:
            import torchvision

            loader = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
            loader(str(root), train=True, download=True)
        except Exception:  # no network: fall through to the clear error below
            if created and Path(root).is_dir() and not any(Path(root).iterdir()):
                Path(root).rmdir()  # leave no trace of the failed attempt
    if not all(p.is_file() for p in needed):
        expected = ", ".join(f"{folder}/{f}" for f in train_files + test_files)
        raise _missing(root, name, f"the CIFAR python-version batches ({expected}); download failed or is off")
    parts = [[_read_cifar_batch(base / f, label_key) for f in files] for files in (train_files, test_files)]
    (x_tr, y_tr), (x_te, y_te) = [(np.concatenate([p[0] for p in ps]), np.concatenate([p[1] for p in ps]))
                                  for ps in parts]
    mean, std = CIFAR_MEAN[name], CIFAR_STD[name]
    return DatasetBundle(name, ImageTensorDataset(x_tr, y_tr, mean, std, True),
                         ImageTensorDataset(x_te, y_te, mean, std, False), classes, 3, (3, 32, 32), "image")


# --------------------------------------------------------------------------- ModelNet40
class PointCloudDataset(Dataset):
    """Point clouds ``(M, P, 3)`` -> samples ``(3, num_points)``; training samples are augmented.

    Training augmentation (as DGCNN's loader): random anisotropic scale in ``[2/3, 3/2]``,
    shift in ``[-0.2, 0.2]`` and a point shuffle.
    """

    def __init__(self, clouds: np.ndarray, labels: np.ndarray, num_points: int, train: bool) -> None:
        if clouds.shape[1] < num_points:
            raise ValueError(f"num_points={num_points} exceeds the {clouds.shape[1]} points stored per cloud")
        self.clouds = torch.from_numpy(np.ascontiguousarray(clouds[:, :num_points], dtype=np.float32))
        self.labels = torch.as_tensor(np.asarray(labels).reshape(-1), dtype=torch.int64)
        self.train = train

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        points = self.clouds[index]
        if self.train:
            scale = torch.empty(3).uniform_(2.0 / 3.0, 1.5)
            shift = torch.empty(3).uniform_(-0.2, 0.2)
            points = (points * scale + shift)[torch.randperm(points.shape[0])]
        return points.t().contiguous(), self.labels[index]


def read_off(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read an ``.off`` mesh: ``(vertices (V, 3) float64, triangles (F, 3) int64)``; polygons are fanned."""
    with open(path) as handle:
        tokens = handle.read().split()
    if not tokens or not tokens[0].startswith("OFF"):
        raise ValueError(f"{path} is not an OFF file (first token {tokens[:1]})")
    # ModelNet40 has files whose header is glued to the counts ("OFF490 518 0").
    head = tokens[0][3:]
    rest = ([head] if head else []) + tokens[1:]
    n_vert, n_face = int(rest[0]), int(rest[1])
    values = rest[3:]
    vertices = np.asarray(values[: 3 * n_vert], dtype=np.float64).reshape(n_vert, 3)
    triangles, pos = [], 3 * n_vert
    for _ in range(n_face):
        count = int(values[pos])
        idx = [int(v) for v in values[pos + 1: pos + 1 + count]]
        pos += 1 + count
        triangles += [(idx[0], idx[j], idx[j + 1]) for j in range(1, count - 1)]
    return vertices, np.asarray(triangles, dtype=np.int64).reshape(-1, 3)


def sample_mesh(vertices: np.ndarray, triangles: np.ndarray, num_points: int, seed: int = 0) -> np.ndarray:
    """Area-weighted uniform surface sample ``(num_points, 3)``, centred and scaled into the unit sphere."""
    if len(triangles) == 0:
        raise ValueError("mesh has no faces to sample from")
    rng = np.random.default_rng(seed)
    a, b, c = (vertices[triangles[:, i]] for i in range(3))
    areas = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    probs = areas / areas.sum() if areas.sum() > 0 else np.full(len(areas), 1.0 / len(areas))
    face = rng.choice(len(triangles), size=num_points, p=probs)
    r1, r2 = np.sqrt(rng.random(num_points))[:, None], rng.random(num_points)[:, None]
    points = (1 - r1) * a[face] + r1 * (1 - r2) * b[face] + r1 * r2 * c[face]
    points -= points.mean(axis=0)
    radius = np.linalg.norm(points, axis=1).max()
    return (points / radius if radius > 0 else points).astype(np.float32)


def _modelnet_h5(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    import h5py

    files = sorted(glob.glob(str(folder / f"ply_data_{split}*.h5")))
    data, labels = [], []
    for file in files:
        with h5py.File(file, "r") as handle:
            data.append(np.asarray(handle["data"], dtype=np.float32))
            labels.append(np.asarray(handle["label"], dtype=np.int64).reshape(-1))
    return np.concatenate(data), np.concatenate(labels)


def _modelnet_off(folder: Path, split: str, num_points: int) -> tuple[np.ndarray, np.ndarray]:
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    clouds, labels = [], []
    for label, name in enumerate(classes):
        for i, file in enumerate(sorted((folder / name / split).glob("*.off"))):
            vertices, triangles = read_off(file)
            clouds.append(sample_mesh(vertices, triangles, num_points, seed=i))
            labels.append(label)
    return np.stack(clouds), np.asarray(labels, dtype=np.int64)


def modelnet40(root: str | os.PathLike = "data", num_points: int = 1024) -> DatasetBundle:
    """ModelNet40 point clouds ``(3, num_points)``.

    Read from ``modelnet40_ply_hdf5_2048/ply_data_{train,test}*.h5`` when present, else sampled
    (area-weighted) from the meshes ``ModelNet40/<class>/{train,test}/*.off``.
    """
    root = Path(root)
    h5_dir = root / "modelnet40_ply_hdf5_2048"
    off_dir = root / "ModelNet40"
    if glob.glob(str(h5_dir / "ply_data_train*.h5")) and glob.glob(str(h5_dir / "ply_data_test*.h5")):
        (x_tr, y_tr), (x_te, y_te) = _modelnet_h5(h5_dir, "train"), _modelnet_h5(h5_dir, "test")
    elif off_dir.is_dir() and any(off_dir.glob("*/train/*.off")):
        (x_tr, y_tr), (x_te, y_te) = (_modelnet_off(off_dir, s, num_points) for s in ("train", "test"))
    else:
        raise _missing(root, "modelnet40", "modelnet40_ply_hdf5_2048/ply_data_{train,test}*.h5 (with 'data' "
                       "(N, 2048, 3) and 'label') or ModelNet40/<class>/{train,test}/*.off meshes")
    num_classes = max(40, int(max(y_tr.max(), y_te.max())) + 1)
    return DatasetBundle("modelnet40", PointCloudDataset(x_tr, y_tr, num_points, True),
                         PointCloudDataset(x_te, y_te, num_points, False), num_classes, 3, (3, num_points), "points")


# --------------------------------------------------------------------------- ImageNet
def imagenet(root: str | os.PathLike = "data", image_size: int = 224) -> DatasetBundle:
    """ILSVRC2012 class folders ``<root>/train/<wnid>/*`` and ``<root>/val/<wnid>/*`` (or under ``<root>/imagenet``)."""
    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder

    root = Path(root)
    base = next((b for b in (root, root / "imagenet") if (b / "train").is_dir() and (b / "val").is_dir()), None)
    if base is None:
        raise _missing(root, "imagenet", "train/<class>/*.JPEG and val/<class>/*.JPEG class folders")
    normalize = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train_tf = T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), T.ToTensor(), normalize])
    val_tf = T.Compose([T.Resize(int(round(image_size * 256 / 224))), T.CenterCrop(image_size), T.ToTensor(),
                        normalize])
    train, test = ImageFolder(str(base / "train"), train_tf), ImageFolder(str(base / "val"), val_tf)
    if train.classes != test.classes:
        raise ValueError(f"imagenet train/ and val/ under {base} hold different class folders")
    return DatasetBundle("imagenet", train, test, len(train.classes), 3, (3, image_size, image_size), "image")


# --------------------------------------------------------------------------- registry
DATASETS: dict[str, Callable[..., DatasetBundle]] = {
    "digits": lambda root, input_kind="image", **kw: digits_images(root, input_kind),
    "cifar10": lambda root, input_kind="image", download=True, **kw: cifar("cifar10", root, download),
    "cifar100": lambda root, input_kind="image", download=True, **kw: cifar("cifar100", root, download),
    "modelnet40": lambda root, input_kind="points", num_points=1024, **kw: modelnet40(root, num_points),
    "imagenet": lambda root, input_kind="image", image_size=224, **kw: imagenet(root, image_size),
}


def get_dataset(name: str, root: str | os.PathLike = "data", *, input_kind: str | None = None,
                **kwargs) -> DatasetBundle:
    """Load a data set by name; ``input_kind`` ("image"/"points") must match what the model reads.

    ``digits`` serves both kinds (pixels as points for point-cloud models).

    Raises:
        ValueError: unknown name (the valid ones are listed) or a kind the data set cannot give.
        FileNotFoundError: the files are not under ``root``.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(sorted(DATASETS))}")
    bundle = DATASETS[name](root, input_kind=input_kind or ("points" if name == "modelnet40" else "image"), **kwargs)
    if input_kind is not None and bundle.kind != input_kind:
        raise ValueError(f"dataset {name!r} gives {bundle.kind} inputs but the model reads {input_kind} inputs")
    return bundle
