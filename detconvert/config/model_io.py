"""What a Detectron network takes and gives, by pipeline: the "inputs:" / "outputs:" lines that
``detconvert config --explain`` and ``detconvert inspect`` print, worded the same in both."""
from __future__ import annotations

from typing import Dict, Optional, Tuple

IMAGE = "image"
IMAGE_AND_PROPOSALS = "image + proposals (--proposals FILE or --rpn-weights RPN.pkl)"
DETECTIONS = "detections (boxes, scores, classes; masks / keypoints where the model has those heads)"
PROPOSALS = "proposals (boxes + objectness, no classes; detconvert infer writes them with --proposals-out)"

#: ``ArchSpec.pipeline`` -> (inputs, outputs).
PIPELINE_IO: Dict[str, Tuple[str, str]] = {
    "e2e": (IMAGE, DETECTIONS),
    "retinanet": (IMAGE, DETECTIONS),
    "rpn_only": (IMAGE, PROPOSALS),
    "precomputed_proposals": (IMAGE_AND_PROPOSALS, DETECTIONS),
}


def pipeline_io(pipeline: Optional[str]) -> Tuple[Optional[str], Optional[str]]:
    """``(inputs, outputs)`` in words for a pipeline name; ``(None, None)`` for anything else."""
    return PIPELINE_IO.get(pipeline or "", (None, None))


def io_lines(pipeline: Optional[str]) -> Tuple[str, ...]:
    """``("Inputs: ...", "Outputs: ...")`` for ``--explain`` (empty for an unknown pipeline)."""
    inputs, outputs = pipeline_io(pipeline)
    if inputs is None:
        return ()
    return (f"Inputs: {inputs}.", f"Outputs: {outputs}.")
