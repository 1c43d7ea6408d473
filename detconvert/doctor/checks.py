"""The checks behind ``detconvert doctor``, each a plain function returning :class:`Check` objects.

The probes that read the machine (``/proc/cpuinfo``, ATen's dispatch level, CUDA devices, an HTTP HEAD
request) are small module-level functions, so tests replace them to play another machine.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import os
import platform
import re
import shutil
import socket
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

from detconvert import __version__
from detconvert.errors import DetconvertError
from detconvert.zoo import default_cache_dir, load_catalogue, model_base_url
from detconvert.zoo.download import ENV_CACHE, ENV_MODEL_BASE, ENV_OFFLINE, _offline_from_env

OK, WARN, FAIL = "OK", "WARN", "FAIL"
STATUSES = (OK, WARN, FAIL)

#: seconds the model-base probe may take (connect, then the answer); doctor should answer at once offline.
MODEL_BASE_TIMEOUT_S = 3.0
#: less free space than this in the cache folder is a warning: one detector file is 100-500 MB.
LOW_DISK_BYTES = 1 << 30


@dataclass
class Check:
    """One line of the report: ``status`` is OK / WARN / FAIL; ``advice`` says what to do (empty when OK)."""

    name: str
    status: str
    detail: str
    advice: str = ""


@dataclass
class DoctorReport:
    """Every check in order. ``exit_code`` is 0 without a FAIL, 1 with one (WARNs do not count)."""

    header: str
    checks: List[Check] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if any(c.status == FAIL for c in self.checks) else 0

    def counts(self) -> Dict[str, int]:
        return {status: sum(c.status == status for c in self.checks) for status in STATUSES}

    def to_dict(self) -> Dict[str, Any]:
        return {"header": self.header, "exit_code": self.exit_code, "counts": self.counts(),
                "checks": [asdict(c) for c in self.checks]}

    def format_text(self) -> str:
        width = max([len(c.name) for c in self.checks] + [10])
        lines = [self.header]
        for check in self.checks:
            lines.append(f"{check.status:<4}  {check.name:<{width}}  {check.detail}")
            if check.advice:
                lines.append(f"{'':<4}  {'':<{width}}  -> {check.advice}")
        counts = self.counts()
        lines.append(", ".join(f"{counts[s]} {s}" for s in STATUSES)
                     + ("" if self.exit_code == 0 else "; exit code 1 (a FAIL above)"))
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------ packages

# (name in the report, module to import, how to install or repair it)
REQUIRED_PACKAGES: Tuple[Tuple[str, str, str], ...] = (
    ("torch", "torch", "pip install 'torch>=2.1' (CPU or CUDA build: https://pytorch.org/get-started/locally/)"),
    ("torchvision", "torchvision",
     "pip install the torchvision release built for your torch, from the same index as torch "
     "(a torchvision built for another torch fails to import)"),
    ("numpy", "numpy", "pip install 'numpy>=1.22'"),
    ("opencv", "cv2", "pip install opencv-python-headless (the non-headless build also needs libGL)"),
    ("pycocotools", "pycocotools.mask",
     "pip install --force-reinstall --no-cache-dir pycocotools (a build against another NumPy fails to import)"),
    ("safetensors", "safetensors", "pip install 'safetensors>=0.4'"),
    ("pyyaml", "yaml", "pip install 'pyyaml>=5.4'"),
    ("tqdm", "tqdm", "pip install 'tqdm>=4.60'"),
)
# The [onnx] extra: only `detconvert export --to onnx` needs it, so its absence is not a problem.
OPTIONAL_PACKAGES: Tuple[str, ...] = ("onnx", "onnxscript", "onnxruntime")
# Distribution names as pyproject.toml spells them, where they differ from the names above.
_DIST_ALIASES = {"opencv-python-headless": "opencv", "opencv-python": "opencv"}


def import_module(name: str) -> Any:
    """Probe: import a module (tests replace this to play a broken install)."""
    return importlib.import_module(name)


def distribution_version(dist: str) -> Optional[str]:
    """Probe: the installed version of a distribution, None when not installed."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def minimum_versions() -> Dict[str, str]:
    """``{package: minimum}`` from detconvert's installed requirements (empty when run from a bare source tree)."""
    try:
        requires = importlib.metadata.requires("detconvert") or []
    except importlib.metadata.PackageNotFoundError:
        return {}
    found = {}
    for line in requires:
        match = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*>=\s*([0-9][0-9.]*)\s*(;.*)?$", line)
        if match and not (match.group(3) or "").strip(" ;"):
            dist = match.group(1).lower()
            found[_DIST_ALIASES.get(dist, dist)] = match.group(2)
    return found


def version_tuple(version: str) -> Tuple[int, ...]:
    """``"2.14.1+cu130"`` -> ``(2, 14, 1)``; stops at the first part that is not a number (``rc1``, ``dev``)."""
    parts = []
    for piece in re.split(r"[.+]", version):
        match = re.match(r"\d+", piece)
        if not match:
            break
        parts.append(int(match.group()))
        if match.group() != piece:
            break
    return tuple(parts)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:200]


def _module_version(module: Any, dist: str) -> str:
    version = getattr(module, "__version__", None)
    if not isinstance(version, str):
        version = distribution_version(dist) or "version unknown"
    return version


def check_packages() -> List[Check]:
    """One check per required package (imports, version >= detconvert's minimum), one for the ONNX extra."""
    minimums = minimum_versions()
    checks = []
    for name, module_name, install in REQUIRED_PACKAGES:
        try:
            module = import_module(module_name)
        except Exception as exc:  # noqa: BLE001 - any import failure is the finding (ImportError, OSError, ...)
            missing = isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] == module_name.split(".")[0]
            detail = "not installed" if missing else f"installed but does not import ({_one_line(exc)})"
            checks.append(Check(name, FAIL, detail, install))
            continue
        top = import_module(module_name.split(".")[0]) if "." in module_name else module  # the version holder
        version = _module_version(top, name)
        minimum = minimums.get(name)
        if minimum and version_tuple(version) and version_tuple(version) < version_tuple(minimum):
            checks.append(Check(name, FAIL, f"{version}, detconvert needs >= {minimum}", install))
            continue
        detail = version
        if name == "torch":
            cuda = getattr(getattr(top, "version", None), "cuda", None)
            detail += f" (built for CUDA {cuda})" if cuda else " (CPU-only build)"
        checks.append(Check(name, OK, detail))
    have = {dist: distribution_version(dist) for dist in OPTIONAL_PACKAGES}
    if all(have.values()):
        checks.append(Check("onnx extra", OK, ", ".join(f"{d} {v}" for d, v in have.items())))
    else:
        missing = ", ".join(d for d, v in have.items() if not v)
        checks.append(Check("onnx extra", OK, f"not installed ({missing}); optional: only `detconvert export --to "
                                              "onnx` needs it (pip install 'detconvert[onnx]')"))
    return checks


# ----------------------------------------------------------------------------------------------- CPU


def read_cpuinfo() -> Optional[str]:
    """Probe: the text of ``/proc/cpuinfo``, None where there is none (macOS, Windows)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            return handle.read()
    except OSError:
        return None


def aten_cpu_capability() -> str:
    """Probe: the vector ISA ATen's CPU kernels dispatch to (``AVX512``, ``AVX2``, ``DEFAULT``, ...)."""
    import torch

    return str(torch.backends.cpu.get_cpu_capability())


def _cpuinfo_field(text: str, key: str) -> Optional[str]:
    for line in text.splitlines():
        if line.split(":", 1)[0].strip() == key and ":" in line:
            return line.split(":", 1)[1].strip()
    return None


def cpu_flags(text: Optional[str]) -> Optional[Set[str]]:
    """The first processor's ``flags`` (x86) or ``Features`` (ARM) from ``/proc/cpuinfo`` text."""
    if not text:
        return None
    value = _cpuinfo_field(text, "flags") or _cpuinfo_field(text, "Features")
    return set(value.split()) if value is not None else None


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def check_cpu() -> List[Check]:
    """The vector ISA (AVX2, AVX-512) and ATen's dispatch level, then bfloat16 (AVX512-BF16, AMX)."""
    text = read_cpuinfo()
    flags = cpu_flags(text)
    model = (_cpuinfo_field(text, "model name") if text else None) or platform.processor() or platform.machine()
    try:
        capability = aten_cpu_capability()
    except Exception as exc:  # noqa: BLE001 - torch missing or broken: reported by the package check
        capability = f"unknown ({_one_line(exc)})"
    checks = []
    if flags is None:
        checks.append(Check("cpu", OK, f"{model}, {os.cpu_count()} logical CPUs; no /proc/cpuinfo flags here; "
                                       f"ATen kernels {capability}"))
        return checks
    x86 = "sse2" in flags or "avx" in flags
    avx2, avx512 = "avx2" in flags, "avx512f" in flags
    detail = (f"{model}, {os.cpu_count()} logical CPUs; AVX2 {_yes(avx2)}, AVX-512 {_yes(avx512)}; "
              f"ATen kernels {capability}")
    forced = os.environ.get("ATEN_CPU_CAPABILITY", "").strip()
    if x86 and not avx2:
        checks.append(Check("cpu", WARN, detail, "no AVX2: PyTorch runs its generic (non-vectorised) kernels, "
                                                 "several times slower; use a CPU with AVX2 or a GPU"))
    elif avx512 and capability.upper() == "AVX2" and forced:
        checks.append(Check("cpu", WARN, detail + f" (ATEN_CPU_CAPABILITY={forced})",
                            "unset ATEN_CPU_CAPABILITY for AVX-512 kernels (holding ATen at AVX2 is only useful "
                            "to reproduce an AVX2 machine)"))
    else:
        checks.append(Check("cpu", OK, detail))
    checks.append(_check_bf16(flags, x86))
    return checks


def precision_fast_backend() -> Optional[str]:
    """Probe: what ``--precision fast`` uses on this CPU (``AMX`` / ``AVX512-BF16``), from the inference
    stage's own rule (CPU flags, ATen level, ``DNNL_MAX_CPU_ISA``); raises when that stage is not there."""
    from detconvert.inference.precision import cpu_bf16_support

    return cpu_bf16_support()


def _check_bf16(flags: Set[str], x86: bool) -> Check:
    amx = "amx_bf16" in flags and "amx_tile" in flags
    avx512_bf16 = "avx512_bf16" in flags
    detail = f"AVX512-BF16 {_yes(avx512_bf16)}, AMX {_yes(amx)}"
    if not x86:
        return Check("cpu bf16", OK, "not an x86 CPU: `--precision fast` runs float32 here")
    try:
        backend = precision_fast_backend()
    except Exception:  # noqa: BLE001 - an older build without the precision policy: report the flags only
        return Check("cpu bf16", OK, detail)
    if backend:
        return Check("cpu bf16", OK, f"{detail}: `--precision fast` runs bfloat16 on {backend}")
    if amx or avx512_bf16:
        cap = os.environ.get("DNNL_MAX_CPU_ISA", os.environ.get("ONEDNN_MAX_CPU_ISA", "")) or "ATEN_CPU_CAPABILITY"
        return Check("cpu bf16", WARN, f"{detail}, but held below it ({cap}): `--precision fast` runs float32",
                     "unset DNNL_MAX_CPU_ISA / ATEN_CPU_CAPABILITY to let `--precision fast` use bfloat16")
    return Check("cpu bf16", OK, f"{detail}: `--precision fast` runs float32 channels-last on this CPU "
                                 "(exact, the default, is unaffected)")


# ---------------------------------------------------------------------------------------------- CUDA


def cuda_devices() -> Tuple[Optional[str], List[str]]:
    """Probe: (the CUDA version torch was built for or None, one description per visible device)."""
    import torch

    devices = []
    if torch.version.cuda and torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            devices.append(f"cuda:{index} {props.name} (sm_{props.major}{props.minor}, "
                           f"{props.total_memory / 2**30:.0f} GiB)")
    return torch.version.cuda, devices


def nvidia_driver_present() -> bool:
    """Probe: an NVIDIA kernel driver is loaded (a GPU exists, whether torch can use it or not)."""
    return Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidiactl").exists()


def check_cuda() -> Check:
    try:
        built_for, devices = cuda_devices()
    except Exception as exc:  # noqa: BLE001 - torch missing or broken: reported by the package check
        return Check("cuda", WARN, f"not checked ({_one_line(exc)})", "fix the torch install first (see above)")
    if devices:
        return Check("cuda", OK, f"CUDA {built_for}; " + "; ".join(devices))
    if not nvidia_driver_present():
        return Check("cuda", OK, "no NVIDIA GPU here: everything runs on the CPU (`--device cpu`)")
    if not built_for:
        return Check("cuda", WARN, "an NVIDIA GPU is present but torch is a CPU-only build",
                     "install a CUDA build of torch (https://pytorch.org/get-started/locally/) to use the GPU")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    hint = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
    return Check("cuda", WARN, f"an NVIDIA driver is loaded but torch (built for CUDA {built_for}) sees no "
                               f"device{hint}",
                 "check `nvidia-smi`, that the driver supports CUDA " + str(built_for)
                 + " and CUDA_VISIBLE_DEVICES; meanwhile `--device cpu` works")


# --------------------------------------------------------------------------------------------- cache


def _folder_size(folder: Path) -> Tuple[int, int]:
    count = size = 0
    for path in folder.iterdir():
        if path.is_file() and not path.name.startswith("."):
            count += 1
            size += path.stat().st_size
    return count, size


def check_cache(cache_dir: Path, env_var: str) -> Check:
    """The model-zoo cache folder: writable (a real write when it exists), its content and free space."""
    advice = f"set {env_var} to a writable folder"
    if cache_dir.exists():
        if not cache_dir.is_dir():
            return Check("cache", FAIL, f"{cache_dir} is not a folder", advice)
        try:
            with tempfile.NamedTemporaryFile(dir=cache_dir, prefix=".doctor-"):
                pass
        except OSError as exc:
            return Check("cache", FAIL, f"{cache_dir} is not writable ({_one_line(exc)})",
                         f"fix its permissions or {advice}")
        count, size = _folder_size(cache_dir)
        where, state = cache_dir, f"writable, {count} file(s), {size / 2**20:.0f} MiB"
    else:
        where = next((p for p in cache_dir.parents if p.exists()), Path("/"))
        if not where.is_dir():
            return Check("cache", FAIL, f"{cache_dir} cannot be created: {where} is not a folder", advice)
        if not os.access(where, os.W_OK | os.X_OK):
            return Check("cache", FAIL, f"{cache_dir} cannot be created: {where} is not writable", advice)
        state = "not created yet, made on the first download"
    free = shutil.disk_usage(where).free
    detail = f"{cache_dir} ({state}; {free / 2**30:.1f} GiB free)"
    if free < LOW_DISK_BYTES:
        return Check("cache", WARN, detail, f"a detector file is 100-500 MB: free some space or {advice} elsewhere")
    return Check("cache", OK, detail)


# ---------------------------------------------------------------------------------------- model base


def http_head(url: str, timeout: float) -> int:
    """Probe: the HTTP status of a HEAD request (raises ``OSError``/``URLError`` when there is no answer).

    Run in a daemon thread with a deadline: urllib's ``timeout`` bounds each socket operation, not
    name resolution, and doctor must answer within seconds on a machine without network.
    """
    result: Dict[str, Any] = {}

    def probe() -> None:
        request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": "detconvert doctor"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                result["status"] = response.status
        except urllib.error.HTTPError as exc:
            result["status"] = exc.code
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            result["error"] = exc

    thread = threading.Thread(target=probe, name="detconvert-doctor-http", daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    if thread.is_alive():
        raise socket.timeout(f"no answer within {timeout:g} s")
    if "error" in result:
        raise result["error"]
    return int(result["status"])


def check_model_base(base: str, probe_url: str, probe_name: str, *, env_var: str, offline_env: str,
                     offline: bool, cache_dir: Path, timeout: float = MODEL_BASE_TIMEOUT_S) -> Check:
    """The model-zoo host answers a HEAD request for one known file (``probe_url``) within ``timeout``."""
    if offline:
        return Check("model base", OK, f"{base} not contacted: {offline_env} is set (the cache only)")
    if base.startswith("file:"):
        local = Path(urllib.request.url2pathname(probe_url[len("file:"):]))
        if local.is_file():
            return Check("model base", OK, f"{base} (local mirror; has {probe_name})")
        return Check("model base", WARN, f"{base} (local mirror) lacks {probe_name}",
                     f"point {env_var} at a folder laid out like the zoo (it should hold {probe_name})")
    offline_advice = (f"without network, the models already in {cache_dir} still work and {offline_env}=1 stops "
                      f"detconvert from trying; else download the files elsewhere and point {env_var} at a mirror "
                      "folder (or copy them into the cache); behind a proxy set HTTPS_PROXY")
    try:
        status = http_head(probe_url, timeout)
    except (socket.timeout, TimeoutError):
        return Check("model base", WARN, f"{base}: no answer within {timeout:g} s", offline_advice)
    except (OSError, urllib.error.URLError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        if isinstance(reason, (socket.timeout, TimeoutError)):
            return Check("model base", WARN, f"{base}: no answer within {timeout:g} s", offline_advice)
        why = _one_line(reason) if isinstance(reason, BaseException) else str(reason)
        return Check("model base", WARN, f"{base} unreachable ({why})", offline_advice)
    if 200 <= status < 400:
        return Check("model base", OK, f"{base} reachable (HTTP {status} for {probe_name})")
    if status in (401, 403, 404, 410):
        return Check("model base", WARN, f"{base} answers HTTP {status} for {probe_name}",
                     f"the zoo may have moved: point {env_var} at the new host or a mirror")
    return Check("model base", WARN, f"{base} answers HTTP {status} for {probe_name}",
                 "the host has a problem; try again later, or point " + env_var + " at a mirror")


# ------------------------------------------------------------------------------------------ together


def diagnose(*, timeout: float = MODEL_BASE_TIMEOUT_S, checks: Sequence[str] = ()) -> DoctorReport:
    """Run every check (or those named in ``checks``: packages, cpu, cuda, cache, model base).

    Never raises for what it finds: a broken package, an unwritable cache or no network are lines of the
    report, with what to do about each.
    """
    wanted = set(checks) or {"packages", "cpu", "cuda", "cache", "model base"}
    header = (f"detconvert {__version__} on Python {platform.python_version()} ({sys.executable}), "
              f"{platform.system()} {platform.machine()}")
    report = DoctorReport(header)
    if "packages" in wanted:
        report.checks += check_packages()
    if "cpu" in wanted:
        report.checks += check_cpu()
    if "cuda" in wanted:
        report.checks.append(check_cuda())
    cache_dir = default_cache_dir()
    if "cache" in wanted:
        report.checks.append(check_cache(cache_dir, ENV_CACHE))
    if "model base" in wanted:
        try:
            catalogue = load_catalogue()
            probe = catalogue.get("R-50")  # the ImageNet R-50: every zoo mirror has it
        except DetconvertError as exc:
            report.checks.append(Check("model base", FAIL, f"not checked: {exc}",
                                       "reinstall detconvert (its model_zoo/catalogue.json is missing or damaged)"))
            return report
        base = model_base_url(catalogue)
        report.checks.append(check_model_base(
            base, probe.url(base), probe.url_path, env_var=ENV_MODEL_BASE, offline_env=ENV_OFFLINE,
            offline=_offline_from_env(), cache_dir=cache_dir, timeout=timeout))
    return report
