"""tensor_shapes / adapt_to_shapes: a pruned model rebuilt from a fresh one and its state dict (no pickled modules)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import projprune as pp


def _net(width: int, dtype=torch.float64) -> nn.Sequential:
    """conv -> BatchNorm -> depthwise conv -> 1x1 conv (no bias) -> LayerNorm over 4 -> Linear (no bias)."""
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.Conv2d(width, width, 3, padding=1, groups=width, bias=False),
                         nn.Conv2d(width, 4, 1, bias=False), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.LayerNorm(4), nn.Linear(4, 2, bias=False)).to(dtype).eval()


def _pruned(width: int = 5) -> nn.Sequential:
    """Channels 8 -> ``width`` as a pruner leaves them, and a bias on the 1x1 conv (a mean correction's)."""
    torch.manual_seed(0)
    model = _net(width)
    model[4].bias = nn.Parameter(torch.randn(4, dtype=torch.float64))
    with torch.no_grad():
        for tensor in list(model.parameters()) + [model[1].running_mean, model[1].running_var.abs_()]:
            tensor.copy_(torch.randn_like(tensor) if tensor is not model[1].running_var else tensor + 0.5)
    return model


def test_a_fresh_model_takes_the_pruned_state_dict():
    pruned = _pruned()
    shapes = pp.tensor_shapes(pruned)
    assert shapes["0.weight"] == [5, 3, 3, 3] and shapes["3.weight"] == [5, 1, 3, 3] and shapes["4.bias"] == [4]
    rebuilt = pp.adapt_to_shapes(_net(8), shapes)
    rebuilt.load_state_dict(pruned.state_dict())  # strict: every key and shape agrees
    conv, depthwise, pointwise = rebuilt[0], rebuilt[3], rebuilt[4]
    assert (conv.out_channels, rebuilt[1].num_features) == (5, 5)
    assert (depthwise.in_channels, depthwise.out_channels, depthwise.groups) == (5, 5, 5)
    assert (pointwise.in_channels, pointwise.out_channels) == (5, 4) and pointwise.bias.shape == (4,)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(rebuilt(x), pruned(x), rtol=0, atol=0)


@pytest.mark.parametrize("shapes, message", [
    ({"0.weight": [5, 3, 3]}, r"shapes\['0.weight'\] has 3 dimensions, this model's tensor 4"),
    ({"9.weight": [2, 2]}, r"shapes has '9.weight', which this model \(Sequential\) does not"),
    ({"0.bias": [-1]}, r"shapes\['0.bias'\] must be a list of non-negative ints"),
    ({"0.bias": [2.5]}, r"must be a list of non-negative ints"),
    ({"8.bias": [2, 1]}, r"shapes has '8.bias'"),  # a bias is a vector
    ([("0.weight", [5, 3, 3, 3])], r"shapes must be a mapping"),
])
def test_shapes_that_do_not_fit_are_refused_before_anything_changes(shapes, message):
    model = _net(8)
    before = copy.deepcopy(model.state_dict())
    good = pp.tensor_shapes(_pruned())
    with pytest.raises(ValueError, match=message):
        pp.adapt_to_shapes(model, {**good, **shapes} if isinstance(shapes, dict) else shapes)
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)
    assert model[0].out_channels == 8 and model[4].bias is None
