"""Object detection for rlnas: SSD default boxes, MultiBox loss, COCO mAP, training and INT8 evaluation.

Modules: :mod:`~rlnas.detection.boxes` (priors, encode/decode, matching, NMS post-processing),
:mod:`~rlnas.detection.loss` (:class:`MultiBoxLoss`), :mod:`~rlnas.detection.metrics`
(:class:`DetectionMAP`), :mod:`~rlnas.detection.evaluate` (FP32 and OpenVINO INT8 mAP),
:mod:`~rlnas.detection.train` (sandwich-rule supernet training). The SSD families live in
:mod:`rlnas.spaces.ssd`, the data loaders in :mod:`rlnas.data.detection`. Nothing heavy is imported
here, so that :mod:`rlnas.spaces.ssd` can import :mod:`rlnas.detection.boxes` at registration time.
"""
