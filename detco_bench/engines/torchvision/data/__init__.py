"""Datasets, augmentation and batching of the torchvision engine.

Records (one dict per image, engine-internal; `records`): ``file_name``, ``height``, ``width``,
``image_id``, ``annotations`` = [{``bbox`` [x0, y0, x1, y1] absolute pixels, ``category`` (0-based
contiguous), ``iscrowd``, ``segmentation`` (COCO polygons or RLE, optional), ``keypoints`` [K*3]
(optional)}], or ``sem_seg_file_name`` for semantic segmentation. They come from the plan's
`DatasetSpec`s (`load.load_records`): COCO json through pycocotools (`coco`; keypoint x/y + 0.5,
as Detectron2 reads them), VOC xml (`voc`; xmin/ymin - 1, Detectron2's convention), Cityscapes
through `detco_bench.datasets` (official instanceIds / labelTrainIds files, cityscapesScripts
labels).

* `images`: reading images, decoding and resizing masks, Detectron2's ResizeShortestEdge size rule.
* `polygons`: instance polygons moved with the augmentation and packed into the target dict.
* `datasets`: `TrainDataset` (Detectron2's training augmentation on tv_tensors) and `TestDataset`.
* `batching`: `TrainBatches` (Detectron2's TrainingSampler + AspectRatioGroupedDataset), the
  data loaders, test-set shards.
"""
