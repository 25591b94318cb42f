"""Weight-only quantised formats of a model (the manifest's `weight_format`), in plain torch.

- `int8`: each linear weight [out, in] as int8 with one symmetric scale per output channel (`qweight` int8
  [out, in], `scale` [out]);
- `int4`: group-wise 4-bit with a scale and an offset per 32 input columns (fewer where the width isn't a
  multiple of 32): w = q * scale + offset, q in 0..15 (`qweight` uint8 [out, in / 2], two values per byte, low
  nibble first; `scale` and `offset` [out, in / group]). The offset makes GGUF Q4_1 blocks (32 weights, a scale
  and a minimum each) exactly representable: re-quantising a model that came from Q4_1 loses nothing.

Only `nn.Linear` weights are quantised (every projection of every layer and the LM head); embeddings, norms and
biases keep the compute dtype. A shard of a quantised model holds `<linear>.qweight` and `<linear>.scale` in place
of `<linear>.weight`; `QuantLinear` takes them and multiplies without ever expanding the whole weight on CPUs when
the activations are bfloat16 (torch's int8 / int4 weight-pack kernels read 1 or 0.5 byte per weight), and by
dequantising on the fly otherwise. Everyone who runs a stage of the model (its worker and the replica verifying
it) runs the same bytes through the same code: the manifest digest pins the format and every shard.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

import torch
import torch.nn.functional as F
from torch import nn

WEIGHT_FORMATS: Final = ("int8", "int4")
GROUP: Final = 32  # input columns per int4 scale (the largest of 32, 16, 8, ... that divides the width)
QWEIGHT, SCALE, OFFSET = "qweight", "scale", "offset"


def check_format(weight_format: str) -> str:
    if weight_format not in WEIGHT_FORMATS:
        raise ValueError(f"weight format must be one of {', '.join(WEIGHT_FORMATS)}, not {weight_format!r}")
    return weight_format


def quantise_weight(weight: torch.Tensor, weight_format: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """A linear weight [out, in] -> {"qweight": ..., "scale": ... (in `dtype`)} of the format."""
    w = weight.detach().float()
    out_features, in_features = w.shape
    if check_format(weight_format) == "int8":
        scale = (w.abs().amax(dim=1) / 127).to(dtype)
        safe = torch.where(scale.float() > 0, scale.float(), 1.0)
        q = torch.clamp(torch.round(w / safe[:, None]), -127, 127).to(torch.int8)
        return {QWEIGHT: q.contiguous(), SCALE: scale.contiguous()}
    if in_features % 2:
        raise ValueError(f"int4 needs an even input width, got {in_features}")
    group = int4_group(in_features)
    groups = w.view(out_features, in_features // group, group)
    low = groups.amin(dim=-1)
    scale, offset = ((groups.amax(dim=-1) - low) / 15).to(dtype), low.to(dtype)
    safe = torch.where(scale.float() > 0, scale.float(), 1.0)
    q = torch.round((groups - offset.float()[..., None]) / safe[..., None]).clamp(0, 15).to(torch.int16)
    q = q.view(out_features, in_features)
    packed = (q[:, 0::2] | (q[:, 1::2] << 4)).to(torch.uint8)
    return {QWEIGHT: packed.contiguous(), SCALE: scale.contiguous(), OFFSET: offset.contiguous()}


def dequantise(tensors: dict[str, torch.Tensor], weight_format: str) -> torch.Tensor:
    """The weight [out, in] a format's tensors stand for, in the scale's dtype."""
    qweight, scale = tensors[QWEIGHT], tensors[SCALE]
    if check_format(weight_format) == "int8":
        return qweight.to(scale.dtype) * scale[:, None]
    group = qweight.shape[1] * 2 // scale.shape[1]
    return _unpack_int4(qweight).to(scale.dtype) * scale.repeat_interleave(group, dim=1) + tensors[
        OFFSET
    ].repeat_interleave(group, dim=1)


def int4_group(in_features: int) -> int:
    return next(g for g in (GROUP, 16, 8, 4, 2) if in_features % g == 0)


def _unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [out, in / 2] -> int16 [out, in] of 0..15 (low nibble = even column)."""
    low, high = (packed & 0x0F).to(torch.int16), (packed >> 4).to(torch.int16)
    return torch.stack([low, high], dim=-1).view(packed.shape[0], packed.shape[1] * 2)


class QuantLinear(nn.Module):
    """`nn.Linear` with a quantised weight: buffers `qweight` and `scale` (and `bias` if the layer has one)."""

    def __init__(
        self, in_features: int, out_features: int, weight_format: str, *, bias: bool, dtype: torch.dtype
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight_format = check_format(weight_format)
        if weight_format == "int8":
            self.register_buffer(QWEIGHT, torch.empty(out_features, in_features, dtype=torch.int8))
            self.register_buffer(SCALE, torch.empty(out_features, dtype=dtype))
        else:
            self.register_buffer(QWEIGHT, torch.empty(out_features, in_features // 2, dtype=torch.uint8))
            groups = in_features // int4_group(in_features)
            self.register_buffer(SCALE, torch.empty(out_features, groups, dtype=dtype))
            self.register_buffer(OFFSET, torch.empty(out_features, groups, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(out_features, dtype=dtype), requires_grad=False) if bias else None
        self._packed: tuple[torch.Tensor, torch.Tensor] | None = None  # int4: torch's CPU kernel layout, made once

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, format={self.weight_format}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tensors = {name: buffer for name, buffer in self.named_buffers(recurse=False)}
        qweight, scale = tensors[QWEIGHT], tensors[SCALE]
        fused = self.weight_format == "int8" or int4_group(self.in_features) == GROUP
        if fused and x.device.type == "cpu" and x.dtype == torch.bfloat16 and scale.dtype == torch.bfloat16:
            flat = x.reshape(-1, self.in_features).contiguous()
            if self.weight_format == "int8":
                y = torch._weight_int8pack_mm(flat, qweight, scale)
            else:
                packed, scales_and_zeros = self._int4_packed(qweight, scale, tensors[OFFSET])
                y = torch._weight_int4pack_mm_for_cpu(flat, packed, GROUP, scales_and_zeros)
            y = y.view(*x.shape[:-1], self.out_features)
            return y if self.bias is None else y + self.bias
        return F.linear(x, dequantise(tensors, self.weight_format).to(x.dtype), self.bias)

    def _int4_packed(
        self, qweight: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self._packed is None:
            values = _unpack_int4(qweight).to(torch.int32)
            packed = torch._convert_weight_to_int4pack_for_cpu(values, 1)
            # the kernel computes (q - 8) * scale + zero per group: zero = offset + 8 * scale
            zero = (offset.float() + 8 * scale.float()).to(scale.dtype)
            scales_and_zeros = torch.stack([scale.t(), zero.t()], dim=-1).contiguous()
            self._packed = (packed, scales_and_zeros)
        return self._packed


def install(module: nn.Module, keys: Iterable[str], weight_format: str, dtype: torch.dtype) -> nn.Module:
    """Replace the `nn.Linear` under each `<path>.qweight` key of a state dict by a `QuantLinear` (for
    `load_state_dict(assign=True)`); returns the module (itself replaced if the key is a bare `qweight`)."""
    for key in keys:
        if not (key == QWEIGHT or key.endswith("." + QWEIGHT)):
            continue
        path = key.removesuffix(QWEIGHT).removesuffix(".")
        linear = module.get_submodule(path) if path else module
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"{key}: {type(linear).__name__} is not a linear layer")
        quant = QuantLinear(
            linear.in_features, linear.out_features, weight_format, bias=linear.bias is not None, dtype=dtype
        )
        if not path:
            return quant
        parent, _, name = path.rpartition(".")
        setattr(module.get_submodule(parent) if parent else module, name, quant)
    return module


def linear_weight_keys(module: nn.Module) -> list[str]:
    """State-dict keys of the `nn.Linear` weights in a module (what a quantised format replaces)."""
    return [f"{name}.weight" if name else "weight" for name, m in module.named_modules() if isinstance(m, nn.Linear)]


def quantise_state(
    state: dict[str, torch.Tensor], linear_keys: Iterable[str], weight_format: str, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """A shard's tensors with the given linear weights replaced by the format's `qweight` / `scale`."""
    out = dict(state)
    for key in linear_keys:
        if key in out:
            base = key.removesuffix("weight")
            for name, tensor in quantise_weight(out.pop(key), weight_format, dtype).items():
                out[base + name] = tensor
    return out


def quantise_linears(module: nn.Module, weight_format: str, dtype: torch.dtype) -> nn.Module:
    """Quantise every `nn.Linear` of an in-memory model in place (what `recast` does to shards; calibration)."""
    keys = linear_weight_keys(module)
    state = {k: v for k, v in module.state_dict().items() if k in keys or k.removesuffix("bias") + "weight" in keys}
    quantised = quantise_state(state, keys, weight_format, dtype)
    install(module, quantised, weight_format, dtype)
    module.load_state_dict(quantised, strict=False, assign=True)
    return module
