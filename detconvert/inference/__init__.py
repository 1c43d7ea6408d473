"""Detectron's test path in PyTorch: load a model (:mod:`.predictor`), run Detectron's inference
(:mod:`.pipeline`), proposal files (:mod:`.proposals`), COCO-format results (:mod:`.results`), the folder
runner behind ``detconvert infer`` (:mod:`.runner`), multi-process sharding (:mod:`.sharded`) and
Detectron-style pictures (:mod:`.vis`).

Nothing is imported here: the submodules pull in torch / OpenCV, which ``import detconvert.inference`` alone
should not pay for.
"""
