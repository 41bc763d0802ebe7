"""Which layers a forward pass runs for the adapters its rows ask for.

PEFT wraps every targeted linear layer of the base once an adapter is loaded, and a batch that
mixes adapters is routed row by row (`adapter_names`): every wrapped layer then pays for the
routing even where each row wants the same thing. So, for one forward:
- no row wants an adapter: the wrapped layers are swapped out for their base layers, and the
  model runs as the plain base does;
- every row wants the same LoRA adapter: they are swapped for plain linear layers holding the
  base's weights with the adapter merged in (computed once in float32 from the untouched base
  weights, kept for the last two adapters, never written into the base's own weights, so no
  rounding builds up as adapters come and go);
- every row wants the same adapter that cannot be merged here (DoRA, another variant, too big):
  PEFT's own path for its active adapter, set to that one;
- rows want different things: PEFT's routing, over the wrapped layers.

The swaps are undone (`release`) before anything else touches the model: the engine releases
between steps before running a control (loading or unloading an adapter) and when it goes idle.
A merged copy costs the targeted layers' weights once more, so an adapter is merged only when
its copies take at most a quarter of the base's weights; a DoRA or other variant is routed."""

from __future__ import annotations

import collections
from typing import Any

import torch
from torch import nn

BASE = "__base__"  # PEFT's name for "no adapter" in a mixed batch
MERGED_KEPT = 2  # adapters whose merged layers are kept
MERGE_SHARE = 0.25  # the most a merged copy may take, against the base's weights


class Routing:
    def __init__(self) -> None:
        self.places: list[tuple[nn.Module, str, Any]] | None = None  # (parent, name, wrapped)
        self.merged: collections.OrderedDict[str, list[nn.Module] | None]
        self.merged = collections.OrderedDict()
        self.swapped = False
        self.active: str | None = None  # the adapter PEFT's own path was last set to

    def route(self, model: nn.Module, wanted: list[str | None]) -> dict[str, Any]:
        """Set the model up for a forward over rows wanting `wanted`; the forward's arguments."""
        names = set(wanted)
        if len(names) == 1:
            (name,) = names
            layers = self._base(model) if name is None else self._merged(model, name)
            if layers is not None:
                self._swap(layers)
                return {}
            self.release()  # PEFT's own path for one adapter (DoRA cannot be routed per row)
            if self.active != name:
                model.set_adapter(name)  # type: ignore[operator]
                self.active = name
            return {}
        self.release()
        return {"adapter_names": [name or BASE for name in wanted]}

    def release(self) -> None:
        """Put PEFT's wrapped layers back."""
        if self.swapped and self.places is not None:
            for parent, name, wrapped in self.places:
                setattr(parent, name, wrapped)
        self.swapped = False

    def forget(self) -> None:
        """The adapters changed: find the wrapped layers again, merge again when asked."""
        self.release()
        self.places = None
        self.merged.clear()
        self.active = None

    def _swap(self, layers: list[nn.Module]) -> None:
        assert self.places is not None
        for (parent, name, _), layer in zip(self.places, layers, strict=True):
            setattr(parent, name, layer)
        self.swapped = True

    def _wrapped(self, model: nn.Module) -> list[tuple[nn.Module, str, Any]]:
        if self.places is None:
            from peft.tuners.lora import LoraLayer

            self.places = []
            for path, module in model.named_modules():
                if isinstance(module, LoraLayer) and "." in path:
                    parent, _, name = path.rpartition(".")
                    self.places.append((model.get_submodule(parent), name, module))
        return self.places

    def _base(self, model: nn.Module) -> list[nn.Module]:
        return [wrapped.get_base_layer() for _, _, wrapped in self._wrapped(model)]

    def _merged(self, model: nn.Module, adapter: str) -> list[nn.Module] | None:
        if adapter in self.merged:
            self.merged.move_to_end(adapter)
            return self.merged[adapter]
        layers = _merge(model, self._wrapped(model), adapter)
        self.merged[adapter] = layers
        while len(self.merged) > MERGED_KEPT:
            self.merged.popitem(last=False)
        return layers


def _merge(
    model: nn.Module, places: list[tuple[nn.Module, str, Any]], adapter: str
) -> list[nn.Module] | None:
    """Each wrapped layer as a plain one with `adapter` merged in (its base layer where the
    adapter does not reach it); None where that cannot be done exactly or costs too much."""
    targeted = [w for _, _, w in places if adapter in w.lora_A]
    if not all(_mergeable(w, adapter) for w in targeted):
        return None
    copies = sum(w.get_base_layer().weight.numel() for w in targeted)
    whole = sum(p.numel() for p in model.parameters())
    if copies > MERGE_SHARE * whole:
        return None
    layers: list[nn.Module] = []
    for _, _, wrapped in places:
        base = wrapped.get_base_layer()
        if adapter not in wrapped.lora_A:
            layers.append(base)
            continue
        a = wrapped.lora_A[adapter].weight.float()
        b = wrapped.lora_B[adapter].weight.float()
        weight = base.weight.float() + (b @ a) * wrapped.scaling[adapter]
        merged = nn.Linear(base.in_features, base.out_features, bias=False, device="meta")
        merged.weight = nn.Parameter(weight.to(base.weight.dtype), requires_grad=False)
        merged.bias = base.bias  # shared, not copied
        layers.append(merged)
    return layers


def _mergeable(wrapped: Any, adapter: str) -> bool:
    base = wrapped.get_base_layer()
    return (
        type(base) is nn.Linear
        and not getattr(wrapped, "fan_in_fan_out", False)
        and adapter not in getattr(wrapped, "lora_variant", {})
        and not wrapped.use_dora.get(adapter, False)
        and isinstance(wrapped.lora_dropout[adapter], nn.Identity | nn.Dropout)
        and base.weight.dtype in (torch.float32, torch.bfloat16, torch.float16)
    )
