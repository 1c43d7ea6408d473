"""The cheap commands answer without the compute stack: ``--help`` (top level and every subcommand), every
argument error, ``inspect``, ``config`` and ``zoo list|show`` import neither torch, torchvision, cv2 nor
pycocotools, and stay under 150 MB peak RSS (the issue's bound; torch alone costs ~500 MB).

Each command runs in a fresh interpreter through ``detconvert.cli.main``; the wrapper then records the
exit code, which heavy packages ``sys.modules`` holds (and who imported each first), and the peak RSS. Import graph and memory, not time:
wall time depends on the machine's load. The rule for command modules is in ``detconvert/commands/__init__.py``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from detconvert.cli import SUBCOMMANDS

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "torchvision", "cv2", "pycocotools")
MAX_RSS_MB = 150
DEMO_PKL = REPO / "detconvert" / "data" / "demo" / "shapes_model_final.pkl"
CONFIG_YAML = REPO / "configs_detectron" / "12_2017_baselines" / "e2e_mask_rcnn_R-50-FPN_1x.yaml"

WRAPPER = textwrap.dedent(
    """
    import json, resource, sys
    HEAVY = set(json.loads(sys.argv[1])["heavy"])
    first_import = {}  # heavy package -> the detconvert frames that imported it first (for the message)

    class RecordHeavyImports:  # a finder that finds nothing: it only notes who asked first
        @staticmethod
        def find_spec(name, path=None, target=None):
            if name in HEAVY and name not in first_import:
                frame, chain = sys._getframe(1), []
                while frame:
                    module = frame.f_globals.get("__name__", "")
                    if module.startswith("detconvert"):
                        chain.append(f"{module}:{frame.f_lineno}")
                    frame = frame.f_back
                first_import[name] = " <- ".join(chain)
            return None

    sys.meta_path.insert(0, RecordHeavyImports)
    from detconvert.cli import main
    try:
        code = main(sys.argv[2:])
    except SystemExit as exc:  # argparse: --help (0) and usage errors (2)
        code = exc.code
    heavy = sorted({name.split(".")[0] for name in sys.modules} & HEAVY)
    # Peak RSS of this process image: VmHWM (reset by exec). ru_maxrss is not: a child forked from a pytest
    # that holds torch would report the parent's ~500 MB.
    try:
        with open("/proc/self/status") as status:
            rss_mb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    sys.stdout.flush()
    print("\\n" + json.dumps({"code": code, "heavy": heavy, "max_rss_mb": rss_mb, "imported_by": first_import}))
    """
)


def run_measured(argv, tmp_path):
    """Run ``detconvert *argv`` in a fresh interpreter: (exit code, heavy modules loaded, peak RSS MB, stderr)."""
    env = dict(os.environ, DETCONVERT_CACHE=str(tmp_path / "cache"), DETCONVERT_OFFLINE="1")
    done = subprocess.run([sys.executable, "-c", WRAPPER, json.dumps({"heavy": HEAVY}), *map(str, argv)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["code"], result["heavy"], result["max_rss_mb"], done.stderr, result["imported_by"]


def assert_lean(argv, tmp_path, expect_code):
    code, heavy, rss_mb, err, imported_by = run_measured(argv, tmp_path)
    assert code == expect_code, f"detconvert {' '.join(map(str, argv))}: exit {code}\n{err[-2000:]}"
    assert "Traceback" not in err, err[-2000:]
    assert heavy == [], f"detconvert {' '.join(map(str, argv))} imported {heavy}, first through {imported_by}"
    assert rss_mb < MAX_RSS_MB, f"detconvert {' '.join(map(str, argv))}: peak RSS {rss_mb:.0f} MB"
    return err


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_subcommand_help_and_usage_errors_are_lean(command, tmp_path):
    assert_lean([command, "--help"], tmp_path, 0)
    err = assert_lean([command, "--no-such-flag"], tmp_path, 2)
    assert "unrecognized arguments: --no-such-flag" in err or "invalid choice" in err or "required" in err, err


@pytest.mark.parametrize(
    "argv, code",
    [
        ([], 2),  # no command: the help, exit 2
        (["--help"], 0),
        (["no-such-command"], 2),
        (["zoo", "list"], 0),
        (["zoo", "list", "--type", "mask", "--json"], 0),
        (["zoo", "show", "R-50"], 0),
        (["zoo", "show", "no-such-model"], 2),
        (["config", CONFIG_YAML, "--explain"], 0),
        (["config", DEMO_PKL, "--json"], 0),
        (["inspect", DEMO_PKL], 0),
        (["inspect", DEMO_PKL, "--json", "--no-hash"], 0),
        (["inspect", "missing.pkl"], 2),
        (["infer", "--thresh", "x"], 2),
        (["export", "model.pkl", "--to", "tflite", "-o", "out"], 2),
    ],
    ids=lambda value: value if isinstance(value, int) else " ".join(Path(str(a)).name for a in value) or "-",
)
def test_cheap_commands_are_lean(argv, code, tmp_path):
    assert_lean(argv, tmp_path, code)


def test_inspect_empty_file_is_lean(tmp_path):
    """The issue's case: 1.6 s and 650 MB to say that a file is empty."""
    (tmp_path / "empty.pkl").write_bytes(b"")
    err = assert_lean(["inspect", "empty.pkl"], tmp_path, 2)
    assert err.strip().splitlines() == ["detconvert inspect: error: empty.pkl: empty file (0 bytes; the download "
                                        "may have failed)"]


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["train", "--cfg", "c.yaml", "--dataset", "d.json", "--iter_size", "0"], "--iter_size"),
        (["weights", "model.pkl", "--set", "TEST.SCALE"], "--set"),
        (["export", "model.pkl", "--to", "pth", "-o", "out.pth", "--set", "TEST.SCALE"], "--set"),
        (["eval", "--results", "r.json"], "--annotations"),
        (["eval", "--annotations", "a.json"], "--image_dir"),
        (["eval", "--annotations", "a.json", "--results", "r.json", "--wts", "w.pkl"], "--results"),
        (["eval", "--voc", "VOC2007", "--annotations", "a.json"], "--annotations"),
        (["infer"], "no images given"),
        (["infer", "a.jpg", "--proposals-drawn", "-1"], "--proposals-drawn"),
        (["doctor", "--timeout", "0"], "--timeout"),
    ],
    ids=lambda value: value if isinstance(value, str) else " ".join(value),
)
def test_argument_errors_of_computing_commands_are_lean(argv, flag, tmp_path):
    """Values argparse cannot check are checked by ``run`` before it imports the compute stack."""
    err = assert_lean(argv, tmp_path, 2)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"detconvert {argv[0]}: error: ") and flag in lines[0], err


def test_wrapper_sees_heavy_imports(tmp_path):
    """The check can fail: a command that computes does show up with torch loaded."""
    code, heavy, rss_mb, err, imported_by = run_measured(["doctor", "--json", "--timeout", "0.2"], tmp_path)
    assert code in (0, 1), err
    assert {"torch", "torchvision", "cv2", "pycocotools"} <= set(heavy)
    assert imported_by["torch"].startswith("detconvert.doctor.checks:")
    assert rss_mb > MAX_RSS_MB
