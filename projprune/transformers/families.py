"""Locate the feed-forward (FFN) blocks of a Hugging Face transformer and edit them.

A *unit* of an FFN block is one hidden neuron: one row of the input projection(s) and the
matching column of the output projection. Every supported family is a row of
:data:`FAMILIES`: dotted paths of the input projection(s) and of the output projection,
relative to the module that owns them, and the config attributes that hold the uniform
FFN width.

- ``bert``: ``intermediate.dense`` -> ``output.dense`` (BERT, RoBERTa, ViT, ...).
- ``gpt2``: ``c_fc`` -> ``c_proj`` inside GPT-2's MLP; both are ``transformers``
  ``Conv1D`` layers whose weight is stored transposed, ``(in, out)``, so the unit matrix
  is ``c_fc.weight.T``.
- ``fc``: ``fc1`` -> ``fc2`` (OPT decoder layers, Phi / CLIP MLPs).
- ``gated``: ``gate_proj`` and ``up_proj`` -> ``down_proj`` (LLaMA, Mistral, Qwen, ...).
  Unit ``j`` computes ``act(g_j . x) * (u_j . x)``: it depends on the input only through
  the pair of rows ``(g_j, u_j)``, so its row in ``W`` is the concatenation
  ``[g_j, u_j]`` of length ``2d``. Two units with equal concatenated rows produce equal
  activations (an exact duplicate the output projection can absorb), and a unit whose
  concatenated row lies in the span of the others is redundant in both factors at once;
  looking at ``g`` alone would call units with equal gates but different ``u`` duplicates.
  One index set slices gate rows, up rows and down columns together.

Nothing here does file I/O; ``transformers`` is only imported to recognise ``Conv1D`` and
``PreTrainedModel``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "FAMILIES",
    "WIDTHS_KEY",
    "FFNBlock",
    "FFNFamily",
    "PER_LAYER_NOTE",
    "config_owners",
    "find_ffn_blocks",
    "guard_config",
    "resize_ffn_blocks",
]


#: Config attribute holding per-block FFN widths when they are not uniform.
WIDTHS_KEY = "projprune_ffn_widths"

#: What a saved config holds in its width attribute when the widths differ per layer: stock
#: loaders (``AutoModel``, ``SentenceTransformer``) then refuse it with this text.
PER_LAYER_NOTE = "per-layer widths in projprune_ffn_widths: load with projprune.transformers.from_pretrained"

_GUARDED: dict[type, type] = {}


def guard_config(config, keys: Sequence[str]) -> None:
    """Make ``config`` save ``PER_LAYER_NOTE`` instead of the ints in ``keys`` (in memory they stay ints).

    The config's class becomes a cached subclass whose ``to_dict`` writes the note, so a stock
    loader fails with a message naming :func:`projprune.transformers.from_pretrained`.
    """
    base = type(config)
    if base in _GUARDED.values():
        return
    if base not in _GUARDED:
        def to_dict(self):
            out = base.to_dict(self)
            for key in getattr(self, "_projprune_guarded", ()) if out.get(WIDTHS_KEY) else ():
                if key in out:
                    out[key] = PER_LAYER_NOTE
            out.pop("_projprune_guarded", None)
            return out

        _GUARDED[base] = type(base.__name__, (base,), {"to_dict": to_dict, "__module__": base.__module__})
    object.__setattr__(config, "_projprune_guarded", tuple(keys))
    config.__class__ = _GUARDED[base]


@dataclass(frozen=True)
class FFNFamily:
    """How one architecture family names its FFN projections.

    Attributes:
        name: family name used in reports.
        input_paths: dotted paths (relative to the owning module) of the input
            projection(s); several paths (gated MLPs) share one unit index.
        output_path: dotted path of the output projection.
        conv1d: projections are ``transformers`` ``Conv1D`` (weight ``(in, out)``).
        width_keys: config attributes that set the uniform FFN width (first present wins).
    """

    name: str
    input_paths: tuple[str, ...]
    output_path: str
    conv1d: bool = False
    width_keys: tuple[str, ...] = ("intermediate_size",)

    def describe(self) -> str:
        return f"{self.name}: {' + '.join(self.input_paths)} -> {self.output_path}"


# Order matters only for modules that would match two rows (none of the supported ones do).
FAMILIES: dict[str, FFNFamily] = {
    "bert": FFNFamily("bert", ("intermediate.dense",), "output.dense", width_keys=("intermediate_size",)),
    "gpt2": FFNFamily("gpt2", ("c_fc",), "c_proj", conv1d=True, width_keys=("n_inner",)),
    "fc": FFNFamily("fc", ("fc1",), "fc2", width_keys=("ffn_dim", "intermediate_size")),
    "gated": FFNFamily("gated", ("gate_proj", "up_proj"), "down_proj", width_keys=("intermediate_size",)),
}


def _is_conv1d(module: nn.Module) -> bool:
    # Duck-typed so that this module imports without transformers; Conv1D keeps nf/nx.
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "nx")


def _get_path(module: nn.Module, path: str) -> nn.Module | None:
    current: nn.Module | None = module
    for part in path.split("."):
        current = getattr(current, part, None) if current is not None else None
        if not isinstance(current, nn.Module):
            return None
    return current


def _out_features(layer: nn.Module, conv1d: bool) -> int:
    return layer.weight.shape[1] if conv1d else layer.weight.shape[0]


def _in_features(layer: nn.Module, conv1d: bool) -> int:
    return layer.weight.shape[0] if conv1d else layer.weight.shape[1]


@dataclass
class FFNBlock:
    """One FFN block of a model: input projection(s), output projection and their owner.

    Unit matrices follow projprune's convention: ``W: (n, m)`` one row per hidden unit,
    ``V: (k, n)`` the output projection's weight with column ``j`` reading unit ``j``.
    """

    name: str
    family: FFNFamily
    inputs: tuple[nn.Module, ...]
    output: nn.Module

    @property
    def width(self) -> int:
        """Number of hidden units ``n``."""
        return _out_features(self.inputs[0], self.family.conv1d)

    def _input_weight(self, layer: nn.Module) -> torch.Tensor:
        return layer.weight.detach().t() if self.family.conv1d else layer.weight.detach()

    def unit_weight(self) -> torch.Tensor:
        """``W: (n, sum of input dims)``; gated blocks concatenate ``[gate_row, up_row]``."""
        return torch.cat([self._input_weight(layer) for layer in self.inputs], dim=1)

    def policy_weight(self) -> torch.Tensor:
        """PruneNet's state: the first input projection ``(n, d)`` (``gate_proj`` when gated)."""
        return self._input_weight(self.inputs[0])

    def unit_bias(self) -> torch.Tensor | None:
        """``b: (n,)`` of the first input projection, or None."""
        bias = getattr(self.inputs[0], "bias", None)
        return None if bias is None else bias.detach()

    def output_weight(self) -> torch.Tensor:
        """``V: (k, n)``."""
        weight = self.output.weight.detach()
        return weight.t() if self.family.conv1d else weight

    def output_bias(self) -> torch.Tensor | None:
        bias = getattr(self.output, "bias", None)
        return None if bias is None else bias.detach()

    def num_parameters(self) -> int:
        """Parameters of the block's projections (weights and biases)."""
        layers = (*self.inputs, self.output)
        return sum(p.numel() for layer in layers for p in layer.parameters(recurse=False))

    # ------------------------------------------------------------------ editing
    def _set_rows(self, layer: nn.Module, rows: torch.Tensor, bias: torch.Tensor | None) -> None:
        weight = layer.weight
        new_weight = rows.t() if self.family.conv1d else rows
        layer.weight = nn.Parameter(
            new_weight.to(dtype=weight.dtype, device=weight.device).contiguous(), requires_grad=weight.requires_grad
        )
        if getattr(layer, "bias", None) is not None or bias is not None:
            if bias is None:
                raise AssertionError("a projection with a bias must receive new bias values")
            if getattr(layer, "bias", None) is None:  # created (e.g. zeros when the config gains mlp_bias)
                layer.bias = nn.Parameter(torch.zeros(bias.shape, dtype=weight.dtype, device=weight.device),
                                          requires_grad=weight.requires_grad)
            layer.bias = nn.Parameter(
                bias.to(dtype=layer.bias.dtype, device=layer.bias.device).contiguous(),
                requires_grad=layer.bias.requires_grad,
            )
        width = rows.shape[0]
        if self.family.conv1d:
            layer.nf = width
        else:
            layer.out_features = width

    def set_weights(
        self,
        unit_weight: torch.Tensor,
        input_biases: Sequence[torch.Tensor | None],
        output_weight: torch.Tensor,
        output_bias: torch.Tensor | None = None,
    ) -> None:
        """Replace the block's parameters by new ones of width ``n'``.

        Args:
            unit_weight: ``(n', sum of input dims)``, split back over the input projections.
            input_biases: one ``(n',)`` tensor (or None) per input projection.
            output_weight: ``V': (k, n')``.
            output_bias: ``(k,)`` new output bias (None keeps the current one; created if absent).
        """
        dims = [_in_features(layer, self.family.conv1d) for layer in self.inputs]
        for layer, rows, bias in zip(self.inputs, torch.split(unit_weight, dims, dim=1), input_biases):
            self._set_rows(layer, rows, bias)
        out = self.output
        weight = out.weight
        new_weight = output_weight.t() if self.family.conv1d else output_weight
        out.weight = nn.Parameter(
            new_weight.to(dtype=weight.dtype, device=weight.device).contiguous(), requires_grad=weight.requires_grad
        )
        if output_bias is not None:
            if out.bias is None:  # mean correction needs somewhere to go
                out.bias = nn.Parameter(torch.zeros(output_bias.shape, dtype=weight.dtype, device=weight.device),
                                        requires_grad=weight.requires_grad)
            out.bias = nn.Parameter(
                output_bias.to(dtype=out.bias.dtype, device=out.bias.device).contiguous(),
                requires_grad=out.bias.requires_grad,
            )
        if self.family.conv1d:
            out.nx = output_weight.shape[1]
        else:
            out.in_features = output_weight.shape[1]

    def slice_units(self, keep_idx: torch.Tensor) -> None:
        """Keep only the units ``keep_idx`` (sorted ``LongTensor``), with no redistribution."""
        keep_idx = keep_idx.to(device=self.inputs[0].weight.device, dtype=torch.long)
        conv = self.family.conv1d
        with torch.no_grad():
            rows = torch.cat([self._input_weight(layer)[keep_idx] for layer in self.inputs], dim=1)
            biases = [None if getattr(layer, "bias", None) is None else layer.bias[keep_idx] for layer in self.inputs]
            out_weight = self.output.weight.detach()
            new_v = out_weight[keep_idx].t() if conv else out_weight[:, keep_idx]
            self.set_weights(rows, biases, new_v)


def find_ffn_blocks(model: nn.Module) -> list[FFNBlock]:
    """Every FFN block of ``model`` (a ``transformers`` model or any module holding one).

    Blocks come in ``named_modules`` order, i.e. layer order.

    Raises:
        ValueError: no module matches any family of :data:`FAMILIES` (the message lists
            the module names looked for), or a matched block has inconsistent shapes.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    blocks: list[FFNBlock] = []
    seen: set[int] = set()  # layers shared between blocks (ALBERT-style weight sharing) count once
    for name, module in model.named_modules():
        for family in FAMILIES.values():
            inputs = [_get_path(module, path) for path in family.input_paths]
            output = _get_path(module, family.output_path)
            layers = [*inputs, output]
            if any(layer is None for layer in layers):
                continue
            expected = _is_conv1d if family.conv1d else (lambda layer: isinstance(layer, nn.Linear))
            if not all(expected(layer) for layer in layers):
                continue
            widths = {_out_features(layer, family.conv1d) for layer in inputs}
            if len(widths) != 1 or _in_features(output, family.conv1d) not in widths:
                raise ValueError(
                    f"FFN block {name!r} ({family.describe()}): input widths {sorted(widths)} do not match "
                    f"the output projection's input size {_in_features(output, family.conv1d)}"
                )
            if id(output) not in seen:
                seen.add(id(output))
                blocks.append(FFNBlock(name, family, tuple(inputs), output))
            break
    if not blocks:
        looked_for = "; ".join(family.describe() for family in FAMILIES.values())
        raise ValueError(
            f"model: no supported feed-forward block found in {type(model).__name__}. Looked for modules "
            f"holding ({looked_for}) as nn.Linear (Conv1D for gpt2)."
        )
    return blocks


def config_owners(model: nn.Module, blocks: Sequence[FFNBlock]) -> list[tuple[nn.Module, list[int]]]:
    """The outermost ``PreTrainedModel``s inside ``model`` and the indices of the blocks each holds.

    A bare ``transformers`` model is its own owner; a wrapper (e.g. a sentence-transformers
    style module holding the model) yields the inner model. Modules without a ``config``
    yield nothing.
    """
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover - transformers is a dependency of this subpackage
        return []
    block_ids = {id(block.inputs[0]): index for index, block in enumerate(blocks)}
    owners: list[tuple[nn.Module, list[int]]] = []
    claimed: set[int] = set()
    for _, module in model.named_modules():
        if not isinstance(module, PreTrainedModel) or any(id(p) in claimed for p in module.parameters()):
            continue
        indices = [block_ids[id(sub)] for sub in module.modules() if id(sub) in block_ids]
        claimed.update(id(p) for p in module.parameters())
        if indices:
            owners.append((module, sorted(indices)))
    return owners


def resize_ffn_blocks(model: nn.Module, widths: Sequence[int]) -> None:
    """Shrink every FFN block to the given widths (keeps the first units; used to rebuild
    a pruned architecture before its weights are loaded).

    Raises:
        ValueError: ``widths`` does not give one width in ``[1, current width]`` per block.
    """
    blocks = find_ffn_blocks(model)
    if len(widths) != len(blocks):
        raise ValueError(f"widths: expected {len(blocks)} per-block widths, got {len(widths)}")
    for block, width in zip(blocks, widths):
        if not 1 <= int(width) <= block.width:
            raise ValueError(f"widths: block {block.name!r} has width {block.width}, cannot resize to {width}")
    for block, width in zip(blocks, widths):
        if int(width) != block.width:
            block.slice_units(torch.arange(int(width), device=block.inputs[0].weight.device))
