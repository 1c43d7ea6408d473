"""The precision policy: ``exact`` (the default everywhere) or ``fast``, chosen once and recorded.

``exact``
    Every op in float32, in the order that reproduces Detectron's blobs. On the CPU the layout is NCHW:
    channels-last changes the summation order of oneDNN's convolutions and of the GroupNorm kernel, which
    moved scores by 1e-4 and swapped RoIs after the RPN's top-N cut on the GroupNorm goldens. On CUDA no
    TF32: cuDNN's convolutions run TF32 by default (``torch.backends.cudnn.allow_tf32`` is True, a 10-bit
    mantissa), which would put every blob ~1e-3 relative off; it is switched off for the run and the
    caller's settings are restored afterwards (they are process-wide flags other code may rely on). CUDA
    matmuls and, in recent PyTorch, oneDNN's CPU convolutions / matmuls (``torch.backends.mkldnn.*.
    fp32_precision``, which can ask for bf16 / TF32) are held at IEEE float32 the same way.
``fast``
    Convolutions and linear layers under autocast, each frozen AffineChannel folded into its
    convolution (exact keeps Detectron's Conv -> AffineChannel order), the model and input blob channels-last:
    bfloat16 on a CPU with AVX512-BF16 or AMX (checked at run time), bfloat16 on a GPU that has it
    (else float16). Every network module's output is cast back to float32 at its boundary, so
    RoIAlign, box decoding, NMS, score thresholds, mask paste, keypoint decoding and the training
    losses see float32 tensors, exactly as in ``exact``. A CPU without bf16 (or with oneDNN / ATen held
    below AVX-512 BF16 by ``DNNL_MAX_CPU_ISA`` / ``ATEN_CPU_CAPABILITY``) gets one warning line and runs
    channels-last float32. The drift against ``exact`` is measured, not assumed: ``bench/bench_precision.py``
    and the README's precision table.

::

    policy = resolve_precision("fast", torch.device("cpu"))   # PrecisionPolicy(fast, cpu, bfloat16, channels_last)
    with policy.numerics():                                   # exact on CUDA: TF32 off for this block
        feats = policy.run(model.features, blob)              # network under autocast, outputs float32
"""
from __future__ import annotations

import contextlib
import enum
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, Optional, Union

from detconvert.errors import DetconvertError

if TYPE_CHECKING:  # torch is imported where it is used: the CLI checks --precision before it loads torch
    import torch

__all__ = ["Precision", "PrecisionPolicy", "PRECISIONS", "parse_precision", "resolve_precision",
           "cpu_bf16_support"]


class Precision(str, enum.Enum):
    """The user's choice. A ``str`` enum: ``Precision.FAST == "fast"`` and it writes to JSON as ``"fast"``."""

    EXACT = "exact"
    FAST = "fast"

    def __str__(self) -> str:
        return self.value


PRECISIONS = tuple(p.value for p in Precision)


def parse_precision(value: Union[str, Precision, None], source: str = "--precision") -> Precision:
    """``"exact"`` / ``"fast"`` (any case; None -> exact) as a :class:`Precision`.

    Raises:
        DetconvertError: anything else (one line naming ``source`` and the choices).
    """
    if value is None:
        return Precision.EXACT
    if isinstance(value, Precision):
        return value
    text = str(value).strip().lower()
    for choice in Precision:
        if text == choice.value:
            return choice
    raise DetconvertError(f"unknown precision '{value}' (choose {' or '.join(PRECISIONS)})", source)


# ----------------------------------------------------------------------------------------- detection

_ISA_BELOW_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX512_CORE", "AVX512_CORE_VNNI", "AVX10_1_512")


def _cpu_flags() -> Optional[set]:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


def cpu_bf16_support() -> Optional[str]:
    """What gives this CPU fast bfloat16 convolutions (``"AMX"`` / ``"AVX512-BF16"``), or None.

    Checked at run time: the CPU flags (``amx_bf16``, ``avx512_bf16``), ATen's dispatch level (AVX-512,
    lowered by ``ATEN_CPU_CAPABILITY``) and oneDNN's ISA cap (``DNNL_MAX_CPU_ISA``). Without native
    bf16 oneDNN emulates it, slower than float32. macOS / Windows (no ``/proc/cpuinfo``): None.
    """
    import torch

    flags = _cpu_flags()
    if not flags:
        return None
    if torch.backends.cpu.get_cpu_capability() not in ("AVX512", "AVX512_BF16", "AMX"):
        return None
    cap = os.environ.get("DNNL_MAX_CPU_ISA", os.environ.get("ONEDNN_MAX_CPU_ISA", "")).strip().upper()
    if cap in _ISA_BELOW_BF16:
        return None
    if "amx_bf16" in flags and "amx_tile" in flags and cap not in ("AVX512_CORE_BF16",):
        return "AMX"
    if "avx512_bf16" in flags:
        return "AVX512-BF16"
    return None


_warned_no_bf16 = False


def _warn_once(message: str) -> None:
    global _warned_no_bf16
    if not _warned_no_bf16:
        _warned_no_bf16 = True
        print(f"detconvert: warning: {message}", file=sys.stderr, flush=True)


# -------------------------------------------------------------------------------------------- policy


@dataclass(frozen=True)
class PrecisionPolicy:
    """A :class:`Precision` resolved for one device: what actually runs.

    Attributes:
        precision: the choice (``exact`` / ``fast``).
        device_type: ``"cpu"`` or ``"cuda"``.
        compute_dtype: dtype of convolutions and linear layers (float32 in exact, and in fast without bf16).
        channels_last: model and input blob in channels-last memory format.
        backend: what the fast path uses (``"AMX"``, ``"AVX512-BF16"``, ``"CUDA"``), or why it does not.
    """

    precision: Precision
    device_type: str
    compute_dtype: torch.dtype
    channels_last: bool
    backend: str = ""

    @property
    def name(self) -> str:
        return self.precision.value

    @property
    def autocast(self) -> bool:
        return str(self.compute_dtype) != "torch.float32"

    def describe(self) -> Dict[str, Any]:
        """The run metadata recorded beside results and in checkpoints (JSON-ready)."""
        return {
            "precision": self.name,
            "compute_dtype": str(self.compute_dtype).replace("torch.", ""),
            "layout": "channels_last" if self.channels_last else "nchw",
            "device": self.device_type,
            **({"backend": self.backend} if self.backend else {}),
        }

    def __str__(self) -> str:
        dtype = str(self.compute_dtype).replace("torch.", "")
        layout = "channels_last" if self.channels_last else "NCHW"
        return f"{self.name} ({dtype}, {layout}, {self.device_type})"

    # ------------------------------------------------------------------------------ applying it

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model in this policy's memory format, in place (channels-last in fast, NCHW in exact, also
        for a model that a fast training left channels-last); the weights stay float32 either way. Fast also
        folds each frozen AffineChannel into its convolution at inference; exact keeps Detectron's
        Conv -> AffineChannel order."""
        import torch

        from detconvert.modeling.layers import ConvNorm

        fold = self.precision is Precision.FAST  # a fused op changes the rounding: fast only
        for module in model.modules():
            if isinstance(module, ConvNorm):
                module.fold_affine = fold
        return model.to(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)

    def prepare_input(self, images: torch.Tensor) -> torch.Tensor:
        """The input blob (or pooled RoI features) in the layout the convolutions run in."""
        import torch

        if self.channels_last and images.dim() == 4:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    def run(self, module: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``module(*args, **kwargs)`` with convolutions / linear layers in :attr:`compute_dtype`.

        Every floating tensor of the output (also inside tuples, lists and dicts) comes back float32:
        the boundary after which Detectron's post-processing runs. In exact this is a plain call.
        """
        if not self.autocast:
            return module(*args, **kwargs)
        import torch

        with torch.autocast(self.device_type, dtype=self.compute_dtype):
            out = module(*args, **kwargs)
        return _to_float32(out)

    @contextlib.contextmanager
    def numerics(self) -> Iterator[None]:
        """Hold the process-wide float32 settings exact needs for the duration of a run, then restore them.

        exact: IEEE float32 for the convolutions and matmuls of the device (on CUDA cuDNN's TF32 default
        is switched off; on the CPU a TF32/bf16 setting of oneDNN, if someone made one, is overridden).
        Only settings that are not already IEEE are touched. fast changes nothing global.
        """
        if self.precision is not Precision.EXACT:
            yield
            return
        changed = _hold_ieee_float32(self.device_type)
        try:
            yield
        finally:
            for restore in reversed(changed):
                restore()


def _hold_ieee_float32(device_type: str) -> list:
    """Make float32 convolutions / matmuls on ``device_type`` IEEE; returns the undo callbacks.

    PyTorch >= 2.9 has per-backend ``fp32_precision`` settings (``"none"`` inherits from the parent) and
    refuses reads of the legacy flags once the new ones differ, so only the new API is used where it exists.
    """
    import torch

    b = torch.backends
    undo = []
    if hasattr(getattr(b.cudnn, "conv", None), "fp32_precision"):
        chains = ([b.cuda.matmul, b.cuda, b], [b.cudnn.conv, b.cudnn, b]) if device_type == "cuda" else \
            ([b.mkldnn.matmul, b.mkldnn, b], [b.mkldnn.conv, b.mkldnn, b])
        for chain in chains:
            effective = next((v for v in (getattr(o, "fp32_precision", "none") for o in chain) if v != "none"), "ieee")
            if effective != "ieee":
                leaf, saved = chain[0], chain[0].fp32_precision
                leaf.fp32_precision = "ieee"
                undo.append(lambda leaf=leaf, saved=saved: setattr(leaf, "fp32_precision", saved))
        return undo
    # Older PyTorch: the legacy switches.
    saved_matmul = torch.get_float32_matmul_precision()
    if saved_matmul != "highest":
        torch.set_float32_matmul_precision("highest")
        undo.append(lambda: torch.set_float32_matmul_precision(saved_matmul))
    if device_type == "cuda":
        for obj in (b.cudnn, b.cuda.matmul):
            if obj.allow_tf32:
                obj.allow_tf32 = False
                undo.append(lambda obj=obj: setattr(obj, "allow_tf32", True))
    return undo


def _to_float32(value: Any) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() and value.dtype != torch.float32 else value
    if isinstance(value, tuple):
        return type(value)(*(_to_float32(v) for v in value)) if hasattr(value, "_fields") else \
            tuple(_to_float32(v) for v in value)
    if isinstance(value, list):
        return [_to_float32(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_float32(v) for k, v in value.items()}
    return value


def resolve_precision(
    precision: Union[str, Precision, PrecisionPolicy, None],
    device: Union[str, torch.device, None] = None,
    *,
    source: str = "--precision",
) -> PrecisionPolicy:
    """The :class:`PrecisionPolicy` of ``precision`` (``"exact"`` / ``"fast"``, default exact) on ``device``.

    fast on a CPU without bf16 warns once per process (one line on stderr) and runs channels-last float32;
    on CUDA it uses bfloat16 where the GPU has it, else float16.

    Raises:
        DetconvertError: an unknown precision name.
    """
    if isinstance(precision, PrecisionPolicy):
        return precision
    choice = parse_precision(precision, source)
    import torch

    device_type = torch.device(device).type if device is not None else "cpu"
    if choice is Precision.EXACT:
        return PrecisionPolicy(choice, device_type, torch.float32, channels_last=False)
    if device_type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return PrecisionPolicy(choice, device_type, dtype, channels_last=True, backend="CUDA")
    if device_type != "cpu":
        raise DetconvertError(f"fast precision runs on cpu or cuda, not {device_type}", source)
    backend = cpu_bf16_support()
    if backend is None:
        _warn_once("--precision fast: this CPU has no native bfloat16 (AVX512-BF16 / AMX), so fast runs "
                   "channels-last float32")
        return PrecisionPolicy(choice, device_type, torch.float32, channels_last=True,
                               backend="no bf16 on this CPU")
    return PrecisionPolicy(choice, device_type, torch.bfloat16, channels_last=True, backend=backend)
