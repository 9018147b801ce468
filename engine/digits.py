"""scikit-learn's bundled 8x8 ``digits`` data (1,797 images, offline): the embedded default."""

from __future__ import annotations

import numpy as np
import torch


def digits_tensors(
    test_fraction: float = 0.25, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A fixed, seeded, stratified train/test split of ``sklearn.datasets.load_digits``.

    Returns:
        ``(x_train, y_train, x_test, y_test)``; images ``(N, 1, 8, 8)`` float32 scaled to
        ``[0, 1]``, labels ``(N,)`` int64. The same ``seed`` always gives the same split.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    labels = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        images, labels, test_size=test_fraction, random_state=seed, stratify=labels
    )
    return (torch.from_numpy(x_tr), torch.from_numpy(y_tr), torch.from_numpy(x_te), torch.from_numpy(y_te))
