"""Detectron's numerics as tested building blocks (anchors, box coding, NMS, proposals, FPN levels,
RoIAlign, box/mask/keypoint post-processing, image preprocessing).

Each function names the Detectron function it reproduces. Box convention everywhere: inclusive
``[x1, y1, x2, y2]`` (width ``x2 - x1 + 1``). Hot-path ops take and return torch tensors on any device;
the post-processing Detectron does with NumPy/OpenCV (mask paste, keypoint decode, preprocessing)
works on NumPy arrays.
"""
from detconvert.ops.anchors import fpn_rpn_cell_anchors, generate_anchors, grid_anchors, retinanet_cell_anchors
from detconvert.ops.boxes import (
    BBOX_XFORM_CLIP,
    bbox_overlaps,
    bbox_transform,
    bbox_transform_inv,
    boxes_area,
    clip_tiled_boxes,
    expand_boxes,
)
from detconvert.ops.fpn_levels import distribute_rois_to_levels, map_rois_to_fpn_levels
from detconvert.ops.keypoints import PERSON_CLASS_INDEX, heatmaps_to_keypoints, keypoint_results
from detconvert.ops.masks import paste_masks, segm_results
from detconvert.ops.nms import batched_nms, nms, soft_nms
from detconvert.ops.postprocess import (
    BoxResults,
    box_results_with_nms_and_limit,
    box_voting,
    decode_box_predictions,
    to_cls_boxes,
)
from detconvert.ops.preprocess import (
    DETECTRON_PIXEL_MEANS,
    ImageBlob,
    compute_im_scale,
    get_image_blob,
    get_images_blob,
    im_list_to_blob,
    prep_im_for_blob,
)
from detconvert.ops.proposals import (
    collect_fpn_proposals,
    distribute_fpn_proposals,
    generate_proposals,
    proposals_for_one_image,
    stable_topk_desc,
)
from detconvert.ops.roi_align import multilevel_roi_align, roi_align, roi_align_level_blobs

__all__ = [
    "BBOX_XFORM_CLIP",
    "DETECTRON_PIXEL_MEANS",
    "PERSON_CLASS_INDEX",
    "BoxResults",
    "ImageBlob",
    "batched_nms",
    "bbox_overlaps",
    "bbox_transform",
    "bbox_transform_inv",
    "box_results_with_nms_and_limit",
    "box_voting",
    "boxes_area",
    "clip_tiled_boxes",
    "collect_fpn_proposals",
    "compute_im_scale",
    "decode_box_predictions",
    "distribute_fpn_proposals",
    "distribute_rois_to_levels",
    "expand_boxes",
    "fpn_rpn_cell_anchors",
    "generate_anchors",
    "generate_proposals",
    "get_image_blob",
    "get_images_blob",
    "grid_anchors",
    "heatmaps_to_keypoints",
    "im_list_to_blob",
    "keypoint_results",
    "map_rois_to_fpn_levels",
    "multilevel_roi_align",
    "nms",
    "paste_masks",
    "prep_im_for_blob",
    "proposals_for_one_image",
    "retinanet_cell_anchors",
    "roi_align",
    "roi_align_level_blobs",
    "segm_results",
    "soft_nms",
    "stable_topk_desc",
    "to_cls_boxes",
]
