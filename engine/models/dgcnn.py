"""DGCNN classifier (Wang et al. 2019): dynamic-graph edge convolutions on ``(B, 3, N)`` points.

Edge features ``[x_j - x_i, x_i]`` over the ``k`` nearest neighbours (recomputed in each
layer's feature space) go through a shared linear map + BN + LeakyReLU and a max over
neighbours; the four edge-conv outputs are concatenated, embedded, max- and mean-pooled.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def knn_indices(x: torch.Tensor, k: int) -> torch.Tensor:
    """``x: (B, C, N) -> (B, N, k)`` indices of each point's ``k`` nearest neighbours (itself included)."""
    with torch.no_grad():
        sq = (x * x).sum(dim=1, keepdim=True)
        neg_dist = 2 * torch.matmul(x.transpose(1, 2), x) - sq - sq.transpose(1, 2)
        return neg_dist.topk(k=k, dim=-1).indices


def gather_neighbours(feat: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``feat: (B, C, N)``, ``idx: (B, N, k)`` -> ``(B, C, N, k)`` features of each point's neighbours."""
    batch, channels, points = feat.shape
    offsets = torch.arange(batch, device=feat.device).view(-1, 1, 1) * points
    flat = feat.transpose(1, 2).reshape(batch * points, channels)
    return flat[(idx + offsets).reshape(-1)].view(batch, points, -1, channels).permute(0, 3, 1, 2)


class EdgeConv(nn.Module):
    """``h(x_i, x_j) = W [x_j - x_i, x_i]`` + BN + LeakyReLU, max over the k neighbours.

    Written as ``A x_j + B x_i`` with ``A = W_1`` and ``B = W_2 - W_1`` (two 1x1 convs on the
    points, then a gather): the same function without concatenating a tensor with itself,
    which keeps Torch-Pruning's dependency graph exact and saves the k-fold wide input.
    """

    def __init__(self, cin: int, cout: int, k: int) -> None:
        super().__init__()
        self.k = k
        self.neighbour = nn.Conv2d(cin, cout, 1, bias=False)
        self.center = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idx = knn_indices(x, min(self.k, x.shape[-1]))
        x4 = x.unsqueeze(-1)
        neighbours = gather_neighbours(self.neighbour(x4).squeeze(-1), idx)
        out = neighbours + self.center(x4)
        return self.act(self.bn(out)).amax(dim=-1)


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2))


class DGCNN(nn.Module):
    """DGCNN classifier: ``(B, 3, N) -> (B, num_classes)``.

    Args:
        num_classes: output width.
        in_channels: coordinates per point.
        k: neighbours per point (20 in the paper).
        width_mult: scales hidden widths; ``emb_dims`` (1024) is scaled too.
        dropout: dropout in the classifier head.
    """

    def __init__(self, num_classes: int = 40, in_channels: int = 3, k: int = 20, width_mult: float = 1.0,
                 emb_dims: int = 1024, dropout: float = 0.5) -> None:
        super().__init__()
        w = [max(4, round(c * width_mult)) for c in (64, 64, 128, 256, emb_dims, 512, 256)]
        self.k = k
        self.edge1 = EdgeConv(in_channels, w[0], k)
        self.edge2 = EdgeConv(w[0], w[1], k)
        self.edge3 = EdgeConv(w[1], w[2], k)
        self.edge4 = EdgeConv(w[2], w[3], k)
        self.embed = _conv_block(w[0] + w[1] + w[2] + w[3], w[4])
        self.head = nn.Sequential(nn.Linear(2 * w[4], w[5], bias=False), nn.BatchNorm1d(w[5]), nn.LeakyReLU(0.2),
                                  nn.Dropout(dropout), nn.Linear(w[5], w[6]), nn.BatchNorm1d(w[6]),
                                  nn.LeakyReLU(0.2), nn.Dropout(dropout))
        self.classifier = nn.Linear(w[6], num_classes)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        feats, x = [], points
        for edge in (self.edge1, self.edge2, self.edge3, self.edge4):
            x = edge(x)
            feats.append(x)
        emb = self.embed(torch.cat(feats, dim=1).unsqueeze(-1)).squeeze(-1)
        pooled = torch.cat([emb.amax(dim=-1), emb.mean(dim=-1)], dim=1)
        return self.classifier(self.head(pooled))
