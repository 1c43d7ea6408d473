"""The README's Python examples run as written: each ```python block is executed as a script in a folder that
holds the files it names (``m.safetensors``: the golden Mask R-CNN R-50-FPN weights converted by
``convert_weights``; ``coffee.png``: the reference image)."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests._shared import REFERENCE

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def test_readme_has_python_examples():
    assert len(BLOCKS) >= 3


def _prepare(block: str, folder: Path) -> None:
    if "m.safetensors" in block:
        if REFERENCE is None:
            pytest.skip("needs ../shared/reference (golden weights and coffee.png)")
        from detconvert.export.checkpoint import convert_weights
        from tests.test_pipeline_golden import MASK_FPN, weights_path

        convert_weights(weights_path(MASK_FPN), output=folder / "m.safetensors")
    if "coffee.png" in block:
        if REFERENCE is None:
            pytest.skip("needs ../shared/reference/images/coffee.png")
        shutil.copy(REFERENCE / "images" / "coffee.png", folder / "coffee.png")


@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=lambda i: f"block{i + 1}")
def test_readme_python_block_runs(index, tmp_path):
    block = BLOCKS[index]
    _prepare(block, tmp_path)
    script = tmp_path / "example.py"
    script.write_text(block)
    root = str(README.parent)
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "PYTHONPATH": root})
    assert done.returncode == 0, f"README block {index + 1} failed:\n{block}\n--- stderr ---\n{done.stderr[-3000:]}"
