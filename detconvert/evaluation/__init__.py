"""Scoring detections: COCO evaluation of a results file against annotations (:mod:`.coco`) and running a
model over an annotated dataset then scoring it (:mod:`.evaluate`)."""
