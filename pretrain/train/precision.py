"""bf16 autocast on the CPU: a guard around oneDNN's bf16 convolution weight gradients.

The defect (measured with torch 2.14.1, which bundles oneDNN v3.12.0): on any CPU where oneDNN
runs its AVX-512 bf16 convolution kernels (``jit_bf16:avx512_core_bf16`` with native bf16,
``jit_bf16:avx512_core`` emulating it; both AMD Zen 4 and Intel Xeon qualify), the
*backward-weights* pass of a bf16 convolution with a stride above 1 whose output is a single
spatial position writes non-finite values into some weight-gradient entries, intermittently
(2-6 of 8 tries; the forward pass and the input gradient are correct). A timm ResNet at 16-32 px
meets exactly that case in its last stage (a 1x1 map into a 3x3 stride-2 conv). The NaN
gradients then either poison the weights (ZeRO 0) or make ZeRO 1/2's overflow check skip the
step, so the run neither fails nor trains. CPUs without AVX-512 never reach that kernel (oneDNN
has no bf16 convolution below AVX-512), which is why the suite passed on older machines.

Disabling oneDNN is no way out: ATen's own bf16 convolutions are 50-100x slower. So only the
convolutions of that shape class are computed in float32, from the operands as they were
before autocast would round them (their output is cast back to bf16, so the rest of the network
sees the dtype autocast would give it); every other op keeps bf16. Those layers are the smallest
of the network (one output position), so the cost is negligible. The guard is a
``TorchFunctionMode`` active only while a CPU bf16 autocast forward runs, so GPU runs and fp32
runs never see it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch.overrides import TorchFunctionMode


def _pair(value: int | Sequence[int], dims: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, Sequence) else (value,) * dims


def hits_onednn_bf16_defect(input: torch.Tensor, weight: torch.Tensor, stride: int | Sequence[int],
                            padding: int | Sequence[int] | str, dilation: int | Sequence[int]
                            ) -> bool:
    """Whether a 2-d convolution falls in the shape class whose bf16 weight gradient oneDNN
    v3.12 gets wrong: some axis with stride > 1 and a kernel wider than 1 has one output
    position. Conservative: a few shapes of the class computed correctly in bf16 too."""
    if isinstance(padding, str):  # "same"/"valid" only occur with stride 1 in torch
        return False
    spatial = input.shape[-2:]
    kernel = weight.shape[-2:]
    strides, pads, dils = _pair(stride, 2), _pair(padding, 2), _pair(dilation, 2)
    for size, k, s, p, d in zip(spatial, kernel, strides, pads, dils, strict=True):
        out = (size + 2 * p - d * (k - 1) - 1) // s + 1
        if s > 1 and k > 1 and out == 1:
            return True
    return False


class _DefectiveConvsInFloat32(TorchFunctionMode):
    """Computes the convolutions that ``hits_onednn_bf16_defect`` names in float32."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") == "conv2d" and torch.is_autocast_enabled("cpu"):
            bound = _conv2d_args(*args, **kwargs)
            if bound["input"].dim() >= 3 and hits_onednn_bf16_defect(
                    bound["input"], bound["weight"], bound["stride"], bound["padding"],
                    bound["dilation"]):
                bias = bound["bias"]
                with torch.autocast("cpu", enabled=False):
                    out = func(bound["input"].float(), bound["weight"].float(),
                               None if bias is None else bias.float(), bound["stride"],
                               bound["padding"], bound["dilation"], bound["groups"])
                return out.to(torch.get_autocast_dtype("cpu"))
        return func(*args, **kwargs)


def _conv2d_args(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return {"input": input, "weight": weight, "bias": bias, "stride": stride,
            "padding": padding, "dilation": dilation, "groups": groups}


@contextlib.contextmanager
def cpu_bf16_guard(device_type: str, autocast_dtype: torch.dtype | None) -> Iterator[None]:
    """Wrap a forward pass that runs under ``autocast_dtype`` autocast on ``device_type``
    (``None``: no autocast). Active only for bf16 on the CPU; elsewhere the block runs as is."""
    if device_type != "cpu" or autocast_dtype != torch.bfloat16:
        yield
        return
    with _DefectiveConvsInFloat32():
        yield


def engine_guard(engine) -> contextlib.AbstractContextManager[None]:
    """``cpu_bf16_guard`` for a DeepSpeed engine's forward pass."""
    dtype = engine.torch_autocast_dtype() if engine.torch_autocast_enabled() else None
    return cpu_bf16_guard(torch.device(engine.device).type, dtype)
