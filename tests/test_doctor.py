"""``detconvert doctor``: each check on the real machine once, then on machines played by replacing its probes
(another CPU, a broken install, no GPU driver, an unwritable cache), and the model-host probe against local
HTTP servers on 127.0.0.1 (answering, 404, refusing, silent). No test leaves the loopback interface."""
from __future__ import annotations

import functools
import http.server
import json
import socket
import threading
import types
from pathlib import Path

import pytest

from detconvert.cli import main
from detconvert.doctor import FAIL, OK, WARN, Check, DoctorReport, diagnose
from detconvert.doctor import checks as C
from detconvert.zoo import load_catalogue

R50_PATH = load_catalogue().get("R-50").url_path  # the file the model-base probe asks for

AMD_AVX2 = "processor\t: 0\nmodel name\t: AMD EPYC 7B12\nflags\t\t: fpu sse2 avx avx2 fma\n"
INTEL_AMX = ("processor\t: 0\nmodel name\t: Intel Xeon Platinum 8480+\n"
             "flags\t\t: fpu sse2 avx avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n")
OLD_X86 = "processor\t: 0\nmodel name\t: Intel Core 2\nflags\t\t: fpu sse2 ssse3\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes\n"


def by_name(checks):
    return {c.name: c for c in checks}


@pytest.fixture
def env(monkeypatch, tmp_path):
    """A private cache, no offline flag, and the model base on a loopback port nothing listens on."""
    monkeypatch.setenv("DETCONVERT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("DETCONVERT_OFFLINE", raising=False)
    monkeypatch.setenv("DETCONVERT_MODEL_BASE", f"http://127.0.0.1:{closed_port()}")
    return monkeypatch


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ------------------------------------------------------------------------------------- the real machine


def test_real_machine_report_is_complete_and_consistent(env, capsys):
    report = diagnose(timeout=1.0)
    names = [c.name for c in report.checks]
    assert names[:8] == ["torch", "torchvision", "numpy", "opencv", "pycocotools", "safetensors", "pyyaml", "tqdm"]
    assert names[8:] == ["onnx extra", "cpu", "cpu bf16", "cuda", "cache", "model base"]
    for check in report.checks:
        assert check.status in (OK, WARN, FAIL) and check.detail
        assert (check.status == OK) == (check.advice == ""), check
    assert by_name(report.checks)["model base"].status == WARN  # nothing listens there
    assert report.exit_code == (1 if any(c.status == FAIL for c in report.checks) else 0)

    code = main(["doctor", "--json", "--timeout", "1"])
    data = json.loads(capsys.readouterr().out)
    assert code == data["exit_code"] == (1 if data["counts"][FAIL] else 0)
    assert [c["name"] for c in data["checks"]] == names


# ------------------------------------------------------------------------------------------- packages


def test_missing_broken_and_old_packages_fail_with_the_fix(monkeypatch):
    real_import = C.import_module

    def fake_import(name):
        if name == "cv2":
            raise ImportError("libGL.so.1: cannot open shared object file: No such file or directory")
        if name == "pycocotools.mask":
            raise ModuleNotFoundError("No module named 'pycocotools'", name="pycocotools")
        if name in ("torch", "torchvision"):  # keep the test light: no need for the real ones here
            return types.SimpleNamespace(__version__="2.3.0", version=types.SimpleNamespace(cuda=None))
        return real_import(name)

    monkeypatch.setattr(C, "import_module", fake_import)
    monkeypatch.setattr(C, "minimum_versions", lambda: {"numpy": "99.0", "torch": "2.1"})
    found = by_name(C.check_packages())
    assert found["opencv"].status == FAIL and "does not import (ImportError: libGL.so.1" in found["opencv"].detail
    assert "opencv-python-headless" in found["opencv"].advice
    assert (found["pycocotools"].status, found["pycocotools"].detail) == (FAIL, "not installed")
    assert "pip install" in found["pycocotools"].advice
    assert found["numpy"].status == FAIL and "detconvert needs >= 99.0" in found["numpy"].detail
    assert (found["torch"].status, found["torch"].detail) == (OK, "2.3.0 (CPU-only build)")
    assert found["safetensors"].status == OK
    assert DoctorReport("h", list(found.values())).exit_code == 1


def test_version_tuples_and_installed_minimums():
    assert C.version_tuple("2.14.1+cu130") == (2, 14, 1)
    assert C.version_tuple("1.16rc1") == (1, 16)
    assert C.version_tuple("0.16") < C.version_tuple("0.16.1") < C.version_tuple("0.17")
    minimums = C.minimum_versions()  # from the (editable) install's metadata: pyproject.toml's dependencies
    assert minimums["torch"] == "2.1" and minimums["opencv"] == "4.5" and "pytest" not in minimums


# ------------------------------------------------------------------------------------------------ CPU


@pytest.mark.parametrize(
    "cpuinfo, capability, backend, want_cpu, want_bf16",
    [
        (AMD_AVX2, "AVX2", None, (OK, "AVX2 yes, AVX-512 no; ATen kernels AVX2"), (OK, "runs float32")),
        (INTEL_AMX, "AVX512", "AMX", (OK, "AVX-512 yes"), (OK, "AMX yes: `--precision fast` runs bfloat16 on AMX")),
        (INTEL_AMX, "AVX512", None, (OK, "AVX-512 yes"), (WARN, "held below it")),
        (OLD_X86, "DEFAULT", None, (WARN, "AVX2 no"), (OK, "AVX512-BF16 no, AMX no")),
        (ARM, "DEFAULT", None, (OK, "ATen kernels DEFAULT"), (OK, "not an x86 CPU")),
    ],
    ids=["amd-avx2", "intel-amx", "amx-held-down", "no-avx2", "arm"],
)
def test_cpu_features(monkeypatch, cpuinfo, capability, backend, want_cpu, want_bf16):
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    monkeypatch.setattr(C, "read_cpuinfo", lambda: cpuinfo)
    monkeypatch.setattr(C, "aten_cpu_capability", lambda: capability)
    monkeypatch.setattr(C, "precision_fast_backend", lambda: backend)
    found = by_name(C.check_cpu())
    for name, (status, fragment) in (("cpu", want_cpu), ("cpu bf16", want_bf16)):
        assert found[name].status == status and fragment in found[name].detail, found[name]
        assert bool(found[name].advice) == (status != OK)


def test_aten_held_below_the_cpu_is_a_warning(monkeypatch):
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    monkeypatch.setattr(C, "read_cpuinfo", lambda: INTEL_AMX)
    monkeypatch.setattr(C, "aten_cpu_capability", lambda: "AVX2")
    monkeypatch.setattr(C, "precision_fast_backend", lambda: None)
    cpu = by_name(C.check_cpu())["cpu"]
    assert cpu.status == WARN and "ATEN_CPU_CAPABILITY=avx2" in cpu.detail and "unset" in cpu.advice


# ----------------------------------------------------------------------------------------------- CUDA


@pytest.mark.parametrize(
    "built_for, devices, driver, status, fragment",
    [
        ("12.4", ["cuda:0 NVIDIA H100 80GB HBM3 (sm_90, 79 GiB)"], True, OK, "CUDA 12.4; cuda:0 NVIDIA H100"),
        ("13.0", [], False, OK, "no NVIDIA GPU here"),
        ("13.0", [], True, WARN, "sees no device"),
        (None, [], True, WARN, "CPU-only build"),
    ],
    ids=["gpu", "no-gpu", "driver-but-no-device", "cpu-build-with-gpu"],
)
def test_cuda(monkeypatch, built_for, devices, driver, status, fragment):
    monkeypatch.setattr(C, "cuda_devices", lambda: (built_for, devices))
    monkeypatch.setattr(C, "nvidia_driver_present", lambda: driver)
    check = C.check_cuda()
    assert check.status == status and fragment in check.detail, check
    assert bool(check.advice) == (status != OK)


# ---------------------------------------------------------------------------------------------- cache


def test_cache_folder(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    fresh = C.check_cache(cache, "DETCONVERT_CACHE")
    assert fresh.status == OK and "not created yet" in fresh.detail and not cache.exists()
    cache.mkdir()
    (cache / "R-50.pkl").write_bytes(b"x" * 1000)
    present = C.check_cache(cache, "DETCONVERT_CACHE")
    assert present.status == OK and "writable, 1 file(s)" in present.detail
    assert sorted(p.name for p in cache.iterdir()) == ["R-50.pkl"]  # the write probe leaves nothing

    a_file = tmp_path / "a_file"
    a_file.write_text("")
    for bad in (a_file, a_file / "cache"):  # refused whoever runs the test (root ignores permission bits)
        check = C.check_cache(bad, "DETCONVERT_CACHE")
        assert check.status == FAIL and "is not a folder" in check.detail and "DETCONVERT_CACHE" in check.advice

    monkeypatch.setattr(C, "LOW_DISK_BYTES", 1 << 62)
    low = C.check_cache(cache, "DETCONVERT_CACHE")
    assert low.status == WARN and "free some space" in low.advice


# ----------------------------------------------------------------------------------------- model base


@pytest.fixture
def http_server(tmp_path):
    """Serve a folder on 127.0.0.1 over HTTP; yields (folder, base URL)."""
    folder = tmp_path / "mirror"
    folder.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def model_base(timeout=2.0) -> Check:
    (check,) = diagnose(checks=["model base"], timeout=timeout).checks
    return check


def test_model_base_answers(env, http_server):
    folder, url = http_server
    env.setenv("DETCONVERT_MODEL_BASE", url)
    (folder / R50_PATH).parent.mkdir(parents=True)
    (folder / R50_PATH).write_bytes(b"\x80\x02.")
    check = model_base()
    assert (check.status, check.detail) == (OK, f"{url} reachable (HTTP 200 for {R50_PATH})")


def test_model_base_without_the_file_says_it_may_have_moved(env, http_server):
    _, url = http_server
    env.setenv("DETCONVERT_MODEL_BASE", url)
    check = model_base()
    assert check.status == WARN and "HTTP 404" in check.detail and "DETCONVERT_MODEL_BASE" in check.advice


def test_model_base_refused_says_what_to_do_offline(env):
    check = model_base()
    assert check.status == WARN and "unreachable" in check.detail
    assert "DETCONVERT_OFFLINE=1" in check.advice and "DETCONVERT_MODEL_BASE" in check.advice


def test_model_base_that_never_answers_times_out(env):
    with socket.socket() as silent:  # accepts connections (backlog) and never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        env.setenv("DETCONVERT_MODEL_BASE", f"http://127.0.0.1:{silent.getsockname()[1]}")
        check = model_base(timeout=0.3)
    assert check.status == WARN and "no answer within 0.3 s" in check.detail and check.advice


def test_model_base_offline_and_local_mirror(env, tmp_path):
    env.setenv("DETCONVERT_OFFLINE", "1")
    assert model_base().status == OK and "not contacted" in model_base().detail
    env.delenv("DETCONVERT_OFFLINE")
    mirror = tmp_path / "zoo mirror"
    env.setenv("DETCONVERT_MODEL_BASE", str(mirror))
    lacking = model_base()
    assert lacking.status == WARN and "lacks" in lacking.detail
    (mirror / R50_PATH).parent.mkdir(parents=True)
    (mirror / R50_PATH).write_bytes(b"\x80\x02.")
    assert model_base().status == OK


def test_damaged_catalogue_is_a_fail_not_a_crash(env, monkeypatch, tmp_path):
    def damaged():
        raise C.DetconvertError("not a valid model-zoo catalogue (Expecting value)", tmp_path / "catalogue.json")

    monkeypatch.setattr(C, "load_catalogue", damaged)
    check = model_base()
    assert check.status == FAIL and "not a valid model-zoo catalogue" in check.detail and "reinstall" in check.advice


# ----------------------------------------------------------------------------------------- command line


@pytest.mark.parametrize("status, code", [(OK, 0), (WARN, 0), (FAIL, 1)])
def test_exit_code_and_text(monkeypatch, capsys, status, code):
    advice = "" if status == OK else "do this"
    report = DoctorReport("detconvert X", [Check("torch", OK, "2.1"), Check("cache", status, "/c", advice)])
    monkeypatch.setattr("detconvert.doctor.diagnose", lambda timeout: report)
    assert main(["doctor"]) == code
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "detconvert X"
    assert lines[1].split() == ["OK", "torch", "2.1"] and lines[2].split() == [status, "cache", "/c"]
    assert (lines[3].split() == ["->", "do", "this"]) == (status != OK)
    assert lines[-1].startswith(f"{1 + (status == OK)} OK, {int(status == WARN)} WARN, {int(status == FAIL)} FAIL")
