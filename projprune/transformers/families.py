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

Attention blocks (:data:`ATTENTION_FAMILIES`, :class:`AttentionBlock`) are found the same way:
query/key/value projections (GPT-2: the fused ``c_attn``) and the output projection, whose
input channels are the heads' outputs side by side; a unit there is a head (with grouped-query
attention a key/value head and its query heads). :func:`record_heads` and
:func:`resize_attention_blocks` save and rebuild pruned head counts.

Nothing here does file I/O; ``transformers`` is only imported to recognise ``Conv1D`` and
``PreTrainedModel``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = [
    "FAMILIES",
    "WIDTHS_KEY",
    "ATTENTION_FAMILIES",
    "HEADS_KEY",
    "HEADS_NOTE",
    "AttentionBlock",
    "AttentionFamily",
    "FFNBlock",
    "FFNFamily",
    "PER_LAYER_NOTE",
    "check_projections",
    "config_owners",
    "find_attention_blocks",
    "find_ffn_blocks",
    "guard_config",
    "record_heads",
    "resize_attention_blocks",
    "resize_ffn_blocks",
]


#: Config attribute holding per-block FFN widths when they are not uniform.
WIDTHS_KEY = "projprune_ffn_widths"

#: What a saved config holds in its width attribute when the widths differ per layer: stock
#: loaders (``AutoModel``, ``SentenceTransformer``) then refuse it with this text.
PER_LAYER_NOTE = "per-layer widths in projprune_ffn_widths: load with projprune.transformers.from_pretrained"

_GUARDED: dict[type, type] = {}


def guard_config(config, keys: Sequence[str], trigger: str = WIDTHS_KEY, note: str = PER_LAYER_NOTE) -> None:
    """Make ``config`` save ``note`` instead of the ints in ``keys`` while it holds ``trigger``.

    In memory the attributes stay ints.

    The config's class becomes a cached subclass whose ``to_dict`` writes the note, so a stock
    loader fails with a message naming :func:`projprune.transformers.from_pretrained`. Each
    trigger (``projprune_ffn_widths``, ``projprune_attention_heads``) keeps its own keys; a
    later call for the same trigger replaces them.
    """
    base = type(config)
    if base not in _GUARDED.values():
        if base not in _GUARDED:
            def to_dict(self):
                out = base.to_dict(self)
                for trigger_key, (guarded, text) in (getattr(self, "_projprune_guarded", None) or {}).items():
                    for key in guarded if out.get(trigger_key) else ():
                        if key in out:
                            out[key] = text
                out.pop("_projprune_guarded", None)
                return out

            _GUARDED[base] = type(base.__name__, (base,), {"to_dict": to_dict, "__module__": base.__module__})
        config.__class__ = _GUARDED[base]
    guarded = dict(getattr(config, "_projprune_guarded", None) or {})  # a new dict: rollbacks restore vars()
    guarded[trigger] = (tuple(keys), note)
    object.__setattr__(config, "_projprune_guarded", guarded)


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


class _Projections:
    """What FFN and attention blocks share: ``inputs`` producing units, the ``output`` projection reading them."""

    family: FFNFamily | AttentionFamily
    inputs: tuple[nn.Module, ...]
    output: nn.Module

    def output_weight(self) -> torch.Tensor:
        """``V: (k, n)``: column ``i`` reads unit (channel) ``i``."""
        weight = self.output.weight.detach()
        return weight.t() if self.family.conv1d else weight

    def output_bias(self) -> torch.Tensor | None:
        bias = getattr(self.output, "bias", None)
        return None if bias is None else bias.detach()

    def num_parameters(self) -> int:
        """Parameters of the block's projections (weights and biases)."""
        layers = (*self.inputs, self.output)
        return sum(p.numel() for layer in layers for p in layer.parameters(recurse=False))


@dataclass
class FFNBlock(_Projections):
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


# =========================================================================== attention heads
#: Config attribute recording pruned attention heads (see :func:`record_heads`).
HEADS_KEY = "projprune_attention_heads"

#: What a saved config holds in its head-count attributes once heads were pruned.
HEADS_NOTE = "per-layer attention heads in projprune_attention_heads: load with projprune.transformers.from_pretrained"


@dataclass(frozen=True)
class AttentionFamily:
    """How one architecture family names its attention projections and head attributes.

    Attributes:
        name: family name used in reports.
        input_paths: query, key and value projections (one fused path for GPT-2's ``c_attn``),
            relative to the matched module.
        output_path: the output projection, whose input channels are the heads' outputs.
        owner_path: module holding the head attributes ("" = the matched module).
        head_dim_attr: owner attribute giving the per-head width.
        conv1d: projections are ``transformers`` ``Conv1D`` (weight ``(in, out)``).
        count_attrs: owner attributes set to the number of query heads kept (when present).
        width_attrs: owner attributes set to ``query heads × head_dim`` (when present).
        kv_count_attrs: owner attributes set to the number of key/value heads kept (when present).
        config_keys: config attributes holding the model's head counts.
    """

    name: str
    input_paths: tuple[str, ...]
    output_path: str
    owner_path: str = ""
    head_dim_attr: str = "head_dim"
    conv1d: bool = False
    count_attrs: tuple[str, ...] = ()
    width_attrs: tuple[str, ...] = ()
    kv_count_attrs: tuple[str, ...] = ()
    config_keys: tuple[str, ...] = ("num_attention_heads",)

    def describe(self) -> str:
        return f"{self.name}: {' + '.join(self.input_paths)} -> {self.output_path}"


#: Supported attention layouts. ``qkvo`` covers LLaMA, Mistral, Qwen2/3 and ViT: with grouped-query
#: attention (``num_key_value_groups > 1``) a unit is one key/value head with its query heads.
ATTENTION_FAMILIES: dict[str, AttentionFamily] = {
    "bert": AttentionFamily("bert", ("self.query", "self.key", "self.value"), "output.dense", owner_path="self",
                            head_dim_attr="attention_head_size", count_attrs=("num_attention_heads",),
                            width_attrs=("all_head_size",)),
    "gpt2": AttentionFamily("gpt2", ("c_attn",), "c_proj", conv1d=True, count_attrs=("num_heads",),
                            width_attrs=("split_size",), config_keys=("n_head",)),
    "opt": AttentionFamily("opt", ("q_proj", "k_proj", "v_proj"), "out_proj", count_attrs=("num_heads",)),
    "qkvo": AttentionFamily("qkvo", ("q_proj", "k_proj", "v_proj"), "o_proj",
                            count_attrs=("num_heads", "num_attention_heads"), kv_count_attrs=("num_key_value_heads",),
                            config_keys=("num_attention_heads", "num_key_value_heads")),
}


@dataclass
class AttentionBlock(_Projections):
    """One attention layer: its projections and the module that holds its head attributes.

    A *unit* is what :func:`projprune.transformers.prune_heads` removes: one head, or with
    grouped-query attention one key/value head together with its ``group_size`` query heads
    (removing a query head alone would break the ``query head → key/value head`` map the
    forward derives from ``num_key_value_groups``). Unit ``j`` owns the output projection's
    input channels ``j·u .. (j+1)·u − 1`` with ``u = group_size · head_dim``.
    """

    name: str
    family: AttentionFamily
    owner: nn.Module
    inputs: tuple[nn.Module, ...]
    output: nn.Module
    head_dim: int
    group_size: int = 1

    @property
    def channels(self) -> int:
        """``n``: input channels of the output projection (``query heads × head_dim``)."""
        return _in_features(self.output, self.family.conv1d)

    @property
    def unit_channels(self) -> int:
        return self.group_size * self.head_dim

    @property
    def units(self) -> int:
        """Heads (key/value groups with grouped-query attention)."""
        return self.channels // self.unit_channels

    @property
    def query_heads(self) -> int:
        return self.units * self.group_size

    def unit_groups(self) -> torch.Tensor:
        """``(units, u)`` int64: the output projection's input channels of each unit."""
        return torch.arange(self.channels, device="cpu").reshape(self.units, self.unit_channels)

    def _segments(self) -> list[list[tuple[int, int]]]:
        """Per input layer, its ``(row offset, rows per unit)`` segments (q | k | v for a fused layer)."""
        if len(self.inputs) == 1:  # fused q|k|v, each of `channels` rows
            return [[(i * self.channels, self.head_dim) for i in range(3)]]
        return [[(0, self.unit_channels)], [(0, self.head_dim)], [(0, self.head_dim)]]

    def input_rows(self, keep_units: torch.Tensor) -> list[torch.Tensor]:
        """Per input layer, the output rows that units ``keep_units`` (sorted int64) produce."""
        def rows(offset: int, size: int) -> torch.Tensor:
            return offset + (keep_units.unsqueeze(1) * size + torch.arange(size, device="cpu")).flatten()

        return [torch.cat([rows(offset, size) for offset, size in segments]) for segments in self._segments()]

    def params_per_unit(self) -> int:
        """Parameters one unit owns: its query/key/value rows (and biases) and output-projection columns."""
        total = 0
        for layer in self.inputs:
            out = _out_features(layer, self.family.conv1d)
            total += sum(p.numel() for p in layer.parameters(recurse=False)) // out * (out // self.units)
        return total + self.output.weight.numel() // self.units

    # ------------------------------------------------------------------ editing
    def keep_units(self, keep_units: torch.Tensor, output_weight: torch.Tensor | None = None,
                   output_bias: torch.Tensor | None = None) -> None:
        """Keep the units ``keep_units`` (sorted int64) and update every head attribute.

        Args:
            output_weight: ``V': (k, n')`` new output-projection weight on the kept channels
                (None: the old columns, sliced).
            output_bias: ``(k,)`` new output bias (None keeps the current one; created if absent).
        """
        conv = self.family.conv1d
        keep_units = keep_units.cpu().to(torch.long)
        for layer, rows in zip(self.inputs, self.input_rows(keep_units)):
            rows = rows.to(layer.weight.device)
            _replace(layer, "weight", layer.weight.detach()[:, rows] if conv else layer.weight.detach()[rows])
            if getattr(layer, "bias", None) is not None:
                _replace(layer, "bias", layer.bias.detach()[rows])
            setattr(layer, "nf" if conv else "out_features", rows.numel())
        if output_weight is None:
            channels = self.unit_groups()[keep_units].flatten().to(self.output.weight.device)
            output_weight = self.output_weight()[:, channels]
        _replace(self.output, "weight", output_weight.t() if conv else output_weight)
        setattr(self.output, "nx" if conv else "in_features", output_weight.shape[1])
        if output_bias is not None:
            _replace(self.output, "bias", output_bias)
        kept = keep_units.numel()
        for attrs, value in ((self.family.count_attrs, kept * self.group_size), (self.family.kv_count_attrs, kept),
                             (self.family.width_attrs, kept * self.group_size * self.head_dim)):
            for attr in attrs:
                if isinstance(getattr(self.owner, attr, None), int):
                    setattr(self.owner, attr, value)


def _replace(layer: nn.Module, name: str, value: torch.Tensor) -> None:
    """Set ``layer.<name>`` to a new Parameter (created if absent), keeping dtype, device and requires_grad."""
    like = getattr(layer, name, None)
    like = layer.weight if like is None else like
    layer.register_parameter(name, nn.Parameter(value.to(dtype=like.dtype, device=like.device).contiguous(),
                                                requires_grad=like.requires_grad))


def check_projections(model: nn.Module, blocks: Sequence[_Projections], what: str) -> None:
    """Refuse what a write could not handle: meta, parametrized, tied or non-finite projections.

    One ``ValueError`` naming the block (``what`` says its kind, e.g. ``"attention block"``).
    """
    owners_of: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        owners_of.setdefault(id(param), []).append(name)
    for block in blocks:
        for layer in (*block.inputs, block.output):
            problem = None
            if parametrize.is_parametrized(layer):
                problem = (f"has a parametrized projection ({sorted(layer.parametrizations.keys())}); remove it with "
                           "torch.nn.utils.parametrize.remove_parametrizations first")
            for kind, param in layer.named_parameters(recurse=False):
                if problem is not None:
                    break
                if param.is_meta:
                    problem = f"has its {kind} on the meta device; expected materialised weights (load them first)"
                elif len(owners_of.get(id(param), ())) > 1:
                    problem = (f"shares its {kind} with {owners_of[id(param)]}; pruning would untie it silently: "
                               "expected untied projections")
                elif param.numel() and not bool(torch.isfinite(param.detach().abs().amax())):  # NaN propagates
                    problem = f"has NaN or Inf in a projection's {kind}; expected finite weights"
            if problem is not None:
                raise ValueError(f"model: {what} {block.name!r} {problem}")


def _attention_block(name: str, module: nn.Module, family: AttentionFamily) -> AttentionBlock | None:
    inputs = [_get_path(module, path) for path in family.input_paths]
    output = _get_path(module, family.output_path)
    owner = _get_path(module, family.owner_path) if family.owner_path else module
    layers = [*inputs, output]
    if any(layer is None for layer in layers) or owner is None:
        return None
    expected = _is_conv1d if family.conv1d else (lambda layer: isinstance(layer, nn.Linear))
    head_dim = getattr(owner, family.head_dim_attr, None)
    if not all(expected(layer) for layer in layers) or not isinstance(head_dim, int) or head_dim < 1:
        return None
    if len(inputs) == 1 and getattr(owner, "is_cross_attention", False):
        return None  # GPT-2 cross-attention: c_attn holds only keys and values (queries in q_attn); left alone
    group_size = getattr(owner, "num_key_value_groups", 1)
    n = _in_features(output, family.conv1d)
    widths = [_out_features(layer, family.conv1d) for layer in inputs]
    expected_widths = [3 * n] if len(inputs) == 1 else [n, n // group_size, n // group_size]
    if (not isinstance(group_size, int) or group_size < 1 or n % (head_dim * group_size)
            or widths != expected_widths):
        raise ValueError(f"attention block {name!r} ({family.describe()}): projection widths {widths} and "
                         f"output-projection input {n} do not fit head_dim {head_dim} and {group_size} query "
                         f"heads per key/value head; expected {expected_widths}")
    return AttentionBlock(name, family, owner, tuple(inputs), output, head_dim, group_size)


def find_attention_blocks(model: nn.Module) -> list[AttentionBlock]:
    """Every attention block of ``model`` whose heads can be pruned, in ``named_modules`` order.

    Raises:
        ValueError: no module matches a family of :data:`ATTENTION_FAMILIES` (the message lists
            what was looked for), or a matched block's shapes do not fit its head layout.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    blocks: list[AttentionBlock] = []
    seen: set[int] = set()
    for name, module in model.named_modules():
        for family in ATTENTION_FAMILIES.values():
            block = _attention_block(name, module, family)
            if block is None:
                continue
            if id(block.output) not in seen:  # shared layers (ALBERT-style) count once
                seen.add(id(block.output))
                blocks.append(block)
            break
    if not blocks:
        looked_for = "; ".join(family.describe() for family in ATTENTION_FAMILIES.values())
        raise ValueError(f"model: no supported attention block found in {type(model).__name__}. Looked for modules "
                         f"holding ({looked_for}) as nn.Linear (Conv1D for gpt2) with a head_dim attribute.")
    return blocks


def resize_attention_blocks(model: nn.Module, heads: Sequence[int], output_bias: Sequence[bool] | None = None) -> None:
    """Shrink every attention block to ``heads[i]`` query heads (keeps the first units; used to rebuild
    a pruned architecture before its weights are loaded); ``output_bias[i]`` creates a zero output bias.

    Raises:
        ValueError: ``heads`` does not give, per block, a multiple of its group size in ``[1, current]``.
    """
    blocks = find_attention_blocks(model)
    flags = [False] * len(blocks) if output_bias is None else [bool(f) for f in output_bias]
    if len(heads) != len(blocks) or len(flags) != len(blocks):
        raise ValueError(f"heads: expected {len(blocks)} per-block head counts (and output-bias flags), got "
                         f"{len(heads)} ({len(flags)})")
    for block, count in zip(blocks, heads):
        if not (isinstance(count, int) and 1 <= count <= block.query_heads and count % block.group_size == 0):
            raise ValueError(f"heads: block {block.name!r} has {block.query_heads} query heads in groups of "
                             f"{block.group_size}, cannot resize to {count!r}")
    with torch.no_grad():
        for block, count, flag in zip(blocks, heads, flags):
            bias = None
            if flag and block.output_bias() is None:
                bias = torch.zeros(block.output_weight().shape[0], device=block.output.weight.device)
            if count != block.query_heads or bias is not None:
                block.keep_units(torch.arange(count // block.group_size, device="cpu"), None, bias)


def record_heads(config, blocks: Sequence[AttentionBlock], previous: dict | None = None) -> dict:
    """The :data:`HEADS_KEY` record for ``config``: per-block query heads, whether each output
    projection has a bias, and the config's original head counts (kept from ``previous``)."""
    original = dict((previous or {}).get("config") or {})
    for block in blocks:
        for key in block.family.config_keys:
            value = getattr(config, key, None)
            if key not in original and isinstance(value, int):
                original[key] = value
    return {"heads": [block.query_heads for block in blocks], "config": original,
            "output_bias": [block.output_bias() is not None for block in blocks]}
