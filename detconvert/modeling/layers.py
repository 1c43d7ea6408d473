"""Building blocks with Detectron's exact semantics: AffineChannel, conv + norm, fixed bilinear up-sampling."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from detconvert.modeling.mapping import declare_blob, register_suffixes
from detconvert.spec import NormSpec


class AffineChannel2d(nn.Module):
    """Caffe2 ``AffineChannel``: ``y = x * scale + bias`` per channel, nothing else.

    Detectron folded BatchNorm into these two vectors (``pickle_caffe_blobs.remove_spatial_bn_layers``),
    so there are no running statistics and no eps. ``weight``/``bias`` are *buffers*: they never get a
    gradient, ``requires_grad_()`` cannot unfreeze them and ``train()`` changes nothing (Detectron's
    AffineChannel gradient produces only dX).
    """

    def __init__(self, num_channels: int):
        super().__init__()
        self.num_channels = num_channels
        self.register_buffer("weight", torch.ones(num_channels))
        self.register_buffer("bias", torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        # One output allocation: bias + x * scale.
        return torch.addcmul(self.bias.view(shape), x, self.weight.view(shape))

    def extra_repr(self) -> str:
        return f"{self.num_channels}"


register_suffixes(AffineChannel2d, {"weight": "_s", "bias": "_b"})


def bilinear_upsample_kernel(channels: int, up_scale: int) -> np.ndarray:
    """The fixed kernel of Detectron's ``BilinearInterpolation`` (``detector.py``), ``(C, C, 2s, 2s)``.

    The 2-D bilinear filter of size ``2s`` (``utils/net.py`` ``upsample_filt`` rule: factor
    ``(k+1)//2``, centre ``factor-1`` for odd k else ``factor-0.5``) on the channel diagonal only.
    """
    size = 2 * up_scale
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = np.ogrid[:size, :size]
    filt = (1 - abs(og[0] - center) / factor) * (1 - abs(og[1] - center) / factor)
    kernel = np.zeros((channels, channels, size, size), dtype=np.float32)
    kernel[range(channels), range(channels), :, :] = filt
    return kernel


class FixedBilinearUpsample(nn.ConvTranspose2d):
    """Detectron's ``BilinearInterpolation``: a ConvTranspose (k=2s, stride s, pad s/2) with a fixed kernel.

    Reproduces the deconvolution, not ``F.interpolate``: the two differ at the borders (the
    deconvolution gives 0.75 * x0 at the first output pixel). Its weight and bias are stored in
    Detectron files (``kps_score_w``, ``mask_fcn_logits_up_w``) and are loaded like any blob; they
    are initialised to the kernel Detectron builds and are never trained.
    """

    def __init__(self, channels: int, up_scale: int):
        assert up_scale % 2 == 0, "Detectron asserts an even up-sampling scale"
        super().__init__(channels, channels, 2 * up_scale, stride=up_scale, padding=up_scale // 2)
        with torch.no_grad():
            self.weight.copy_(torch.from_numpy(bilinear_upsample_kernel(channels, up_scale)))
            self.bias.zero_()
        self.weight.requires_grad_(False)
        self.bias.requires_grad_(False)


class ConvNorm(nn.Module):
    """A bias-free conv followed by AffineChannel (``ConvAffine``) or GroupNorm (``ConvGN``).

    Blob names: conv ``<name>_w``; AffineChannel ``<norm_name>_s/_b`` (default ``<name>_bn``), GN
    ``<norm_name>_s/_b`` (default ``<name>_gn``). ``relu`` applies an in-place ReLU after the norm.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        name: str,
        norm: NormSpec,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        relu: bool = True,
        norm_name: Optional[str] = None,
    ):
        super().__init__()
        self.conv = declare_blob(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias=False), name
        )
        if norm.kind == "gn":
            self.norm = declare_blob(
                nn.GroupNorm(norm.groups_for(out_channels), out_channels, eps=norm.gn_eps),
                norm_name or f"{name}_gn",
            )
        else:
            self.norm = declare_blob(AffineChannel2d(out_channels), norm_name or f"{name}_bn")
        self.relu = relu
        # Off by default (exact): Detectron runs Conv then AffineChannel. The fast precision policy turns it
        # on (detconvert.inference.precision): one pass over the output instead of two, but the scale then
        # multiplies the weights instead of the sums, which moves res4 by ~1e-6 relative.
        self.fold_affine = False
        self._folded: Optional[tuple] = None  # (key, weight, bias): see _folded_affine

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fold_affine and isinstance(self.norm, AffineChannel2d) and not torch.is_grad_enabled():
            weight, bias = self._folded_affine()
            conv = self.conv
            x = F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
        else:
            x = self.norm(self.conv(x))
        return torch.relu_(x) if self.relu else x

    def _folded_affine(self) -> tuple:
        """``(conv weight * scale, bias)``, recomputed whenever a tensor is replaced or modified."""
        tensors = (self.conv.weight, self.norm.weight, self.norm.bias)
        key = tuple((t.data_ptr(), t._version, t.device, t.dtype) for t in tensors)
        if self._folded is None or self._folded[0] != key:
            weight, scale, bias = (t.detach() for t in tensors)
            self._folded = (key, weight * scale.view(-1, 1, 1, 1), bias.clone())
        return self._folded[1], self._folded[2]


def conv(in_channels: int, out_channels: int, kernel_size: int, name: str, **kwargs) -> nn.Conv2d:
    """A Detectron ``Conv`` with bias (``<name>_w``, ``<name>_b``)."""
    return declare_blob(nn.Conv2d(in_channels, out_channels, kernel_size, **kwargs), name)


def conv_or_gn(
    in_channels: int, out_channels: int, kernel_size: int, name: str, use_gn: bool, norm: NormSpec, **kwargs
) -> nn.Module:
    """Detectron's ``Conv`` (with bias) or ``ConvGN`` (no bias, ``<name>_gn``), no ReLU."""
    if use_gn:
        return ConvNorm(
            in_channels, out_channels, kernel_size, name=name, norm=norm, relu=False,
            stride=kwargs.get("stride", 1), padding=kwargs.get("padding", 0),
        )
    return conv(in_channels, out_channels, kernel_size, name, **kwargs)


def linear(in_features: int, out_features: int, name: str) -> nn.Linear:
    """A Detectron ``FC`` (``<name>_w`` ``(out, in)``, ``<name>_b``)."""
    return declare_blob(nn.Linear(in_features, out_features), name)


def conv_transpose(in_channels: int, out_channels: int, kernel_size: int, name: str, **kwargs) -> nn.ConvTranspose2d:
    """A Detectron ``ConvTranspose`` (``<name>_w`` ``(C_in, C_out, k, k)``, ``<name>_b``)."""
    return declare_blob(nn.ConvTranspose2d(in_channels, out_channels, kernel_size, **kwargs), name)
