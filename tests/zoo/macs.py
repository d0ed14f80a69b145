"""Multiply-accumulate counting with forward hooks.

Counted (the usual "MACs"/"FLOPs" of model zoos, i.e. conv + linear work):
  * ConvNd:            Cout * prod(out_spatial) * Cin/groups * prod(kernel)   (per sample)
  * ConvTransposeNd:   Cin * prod(in_spatial) * Cout/groups * prod(kernel)
  * Linear:            in_features * out_features * tokens  (tokens = all leading dims)
  * LSTM / GRU / RNN:  gates * (in + hidden) * hidden * T  per layer and direction
                       (gates = 4 / 3 / 1)
  * nn.MultiheadAttention: q/k/v/out projections + the two attention matmuls
  * any module defining ``extra_macs(inputs, output) -> int`` (e.g. the zoo ViT's
    Attention, for q @ k^T and attn @ v); its child Linears are counted separately.
Not counted: BN/LN, activations, pooling, elementwise ops, softmax, biases.

By default the model is run on the ``meta`` device (shapes only, no arithmetic), so
counting at 224x224 is instant; ``device="cpu"`` runs it for real.
"""
from __future__ import annotations

import copy
import math
from collections import OrderedDict
from typing import Sequence, Union

import torch
from torch import nn

__all__ = ["count_macs", "layer_macs"]

_RNN_GATES = {nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1}


def _first_tensor(obj):
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, (tuple, list)) and obj:
        return _first_tensor(obj[0])
    return None


def layer_macs(module: nn.Module, inputs: tuple, output) -> int:
    """MACs of one call of ``module`` (0 for modules that are not counted)."""
    out = _first_tensor(output)
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        x = inputs[0]
        k = math.prod(module.kernel_size)
        return x.numel() * (module.out_channels // module.groups) * k
    if isinstance(module, nn.modules.conv._ConvNd):
        k = math.prod(module.kernel_size)
        return out.numel() * (module.in_channels // module.groups) * k
    if isinstance(module, nn.Linear):
        return out.numel() * module.in_features
    for cls, gates in _RNN_GATES.items():
        if type(module) is cls:
            x = inputs[0]
            if x.dim() == 2:  # unbatched (T, F)
                batch, steps = 1, x.shape[0]
            elif module.batch_first:
                batch, steps = x.shape[0], x.shape[1]
            else:
                steps, batch = x.shape[0], x.shape[1]
            dirs = 2 if module.bidirectional else 1
            hidden = module.hidden_size
            real_hidden = module.proj_size if getattr(module, "proj_size", 0) else hidden
            total = 0
            in_size = module.input_size
            for _ in range(module.num_layers):
                per_step = gates * (in_size + real_hidden) * hidden
                if real_hidden != hidden:
                    per_step += hidden * real_hidden
                total += dirs * per_step * steps * batch
                in_size = real_hidden * dirs
            return total
    if isinstance(module, nn.MultiheadAttention):
        q, k = inputs[0], inputs[1]
        e = module.embed_dim
        if module.batch_first:
            batch, lq, lk = q.shape[0], q.shape[1], k.shape[1]
        else:
            lq, batch, lk = q.shape[0], q.shape[1], k.shape[0]
        proj = lq * e * e + lk * module.kdim * e + lk * module.vdim * e + lq * e * e
        return batch * (proj + 2 * lq * lk * e)
    extra = getattr(module, "extra_macs", None)
    if callable(extra):
        return int(extra(inputs, output))
    return 0


@torch.no_grad()
def count_macs(
    model: nn.Module,
    x: Union[torch.Tensor, Sequence[int]],
    *,
    device: str = "meta",
    per_layer: bool = False,
):
    """Count MACs of one forward pass of ``model`` on input ``x`` (a tensor or a shape).

    Returns the total (int), or ``(total, OrderedDict[qualified_name, macs])`` when
    ``per_layer`` is true.  With ``device="meta"`` a deep copy of the model is moved to
    the meta device so nothing is computed; falls back to CPU if that fails.
    """
    shape = tuple(x.shape) if isinstance(x, torch.Tensor) else tuple(int(d) for d in x)
    dtype = x.dtype if isinstance(x, torch.Tensor) else torch.float32
    if device == "meta":
        try:
            m = copy.deepcopy(model).to("meta")
            return _count(m, torch.empty(shape, dtype=dtype, device="meta"), per_layer)
        except Exception:  # pragma: no cover - op without a meta kernel
            pass
    inp = x if isinstance(x, torch.Tensor) else torch.zeros(shape, dtype=dtype)
    return _count(model, inp.to(device if device != "meta" else "cpu"), per_layer)


def _count(model: nn.Module, x: torch.Tensor, per_layer: bool):
    counts: "OrderedDict[str, int]" = OrderedDict()
    handles = []

    def make_hook(name):
        def hook(mod, inputs, output):
            macs = layer_macs(mod, inputs, output)
            if macs:
                counts[name] = counts.get(name, 0) + macs
        return hook

    for name, mod in model.named_modules():
        handles.append(mod.register_forward_hook(make_hook(name)))
    was_training = model.training
    model.eval()
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    total = sum(counts.values())
    return (total, counts) if per_layer else total
