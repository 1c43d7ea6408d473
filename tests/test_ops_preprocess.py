"""Image preprocessing vs Detectron's ``get_image_blob`` goldens (bit-exact: same cv2 resize, same
float64-then-float32 mean subtraction)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from detconvert.ops import compute_im_scale, get_image_blob, get_images_blob, prep_im_for_blob
from tests._shared import REFERENCE, requires_shared


@requires_shared
@pytest.mark.parametrize(
    "case, scale, max_size, stride",
    [("800_1333_fpn", 800, 1333, 32), ("800_1333_nofpn", 800, 1333, None), ("600_1000_nofpn", 600, 1000, None)],
)
def test_image_blob_matches_detectron(case, scale, max_size, stride):
    im = cv2.imread(str(REFERENCE / "images" / "coffee.png"))
    ref = np.load(REFERENCE / "unit" / f"image_blob_{case}.npz")
    blob = get_image_blob(im, scale, max_size, coarsest_stride=stride)
    np.testing.assert_array_equal(blob.data, ref["data"])
    np.testing.assert_array_equal(blob.im_info, ref["im_info"])
    assert blob.im_scales[0] == float(ref["im_scale"])
    np.testing.assert_array_equal(blob.valid_hw[0], ref["valid_hw"])


def test_mean_subtraction_is_float64_rounded_to_float32():
    im = np.arange(256, dtype=np.uint8)[None, :, None].repeat(3, axis=2)
    out, s = prep_im_for_blob(im, 1, 1000)  # min side 1 -> scale 1, no resampling
    assert s == 1.0
    means = np.array([102.9801, 115.9465, 122.7717])
    np.testing.assert_array_equal(out, (im.astype(np.float64) - means).astype(np.float32))


def test_scale_rule():
    # lessons.md L10: 427x640 -> 800x1199; 1000x3000 -> capped at 1333 on the long side.
    assert compute_im_scale(427, 640, 800, 1333) == 800 / 427
    assert compute_im_scale(1000, 3000, 800, 1333) == 1333 / 3000
    out, _ = prep_im_for_blob(np.zeros((427, 640, 3), np.uint8), 800, 1333)
    assert out.shape[:2] == (800, 1199)
    out, _ = prep_im_for_blob(np.zeros((1000, 3000, 3), np.uint8), 800, 1333)
    assert out.shape[:2] == (444, 1333)


def test_batch_blob_pads_each_image_to_the_common_stride_multiple():
    rng = np.random.default_rng(0)
    ims = [rng.integers(0, 256, (40, 60, 3), dtype=np.uint8), rng.integers(0, 256, (50, 30, 3), dtype=np.uint8)]
    batch = get_images_blob(ims, 40, 100, coarsest_stride=32)
    assert batch.data.shape[2] % 32 == 0 and batch.data.shape[3] % 32 == 0
    for i, im in enumerate(ims):
        single = get_image_blob(im, 40, 100, coarsest_stride=32)
        h, w = single.valid_hw[0]
        np.testing.assert_array_equal(batch.data[i, :, :h, :w], single.data[0, :, :h, :w])
        assert not batch.data[i, :, h:, :].any() and not batch.data[i, :, :, w:].any()
        assert batch.im_scales[i] == single.im_scales[0]
        expected_info = np.array([*batch.data.shape[2:], single.im_scales[0]], dtype=np.float32)
        np.testing.assert_array_equal(batch.im_info[i], expected_info)  # padded size, float32 as Detectron
