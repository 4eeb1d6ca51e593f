"""Inference and scoring with the official tools, for the torchvision engine.

* COCO-format data: predictions as COCO result dicts (boxes XYWH, masks RLE-encoded at >= 0.5,
  keypoints - 0.5 back to COCO's pixel indices) scored by pycocotools' COCOeval for "bbox", "segm"
  (without the bbox field, so areas are mask areas, as Detectron2 does) and "keypoints" (OKS sigmas
  of the dataset). Metrics ``bbox/AP``, ``bbox/AP50``, ``bbox/AP75``, ``bbox/APs|m|l``,
  ``bbox/AP-<class>`` ... in percent; undefined values (no ground truth of a size) are left out.
* VOC: Detectron2's PascalVOCDetectionEvaluator re-implemented (`voc_eval`, `voc_ap`): per class,
  detections with xmin/ymin + 1 (VOC's 1-based pixels), scores rounded to 3 and coordinates to 1
  decimal as its text files do, IoU with the +1 pixel convention, difficult objects ignored, the
  11-point VOC07 AP for VOC2007 test (area under the curve otherwise) at IoU 0.50:0.95;
  ``bbox/AP`` is the mean over the 10 thresholds, ``bbox/AP50`` / ``bbox/AP75`` single thresholds.
* Cityscapes: `detco_bench.evaluation` (cityscapesScripts' evalInstanceLevelSemanticLabeling,
  ``segm/AP``, ``segm/AP50``; evalPixelLevelSemanticLabeling, ``sem_seg/mIoU``...).

Modules: `coco`, `voc` (the scorers), `dataset` (inference on one test set, scoring on rank 0),
`run` (the evaluation phase of a job over every DATASETS.TEST entry).

Each process runs inference on its shard of the test set; predictions are gathered on rank 0
(Cityscapes: written as files into one folder), which scores them.
"""
