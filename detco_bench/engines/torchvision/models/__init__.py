"""The transfer models of the torchvision engine, assembled from torchvision parts around our
backbone weights (`build.build_model`).

* ``fpn`` / ``cityscapes_inst``: Mask R-CNN R-FPN; ``keypoint``: Keypoint R-CNN R-FPN (`fpn_rcnn`);
  ``retinanet``: RetinaNet R-FPN (P3-P7, P6 from C5 as in Detectron2; `retinanet`).
* ``c4`` (Mask R-CNN) / ``voc_c4`` (Faster R-CNN): Detectron2's Res5ROIHeads rebuilt from torchvision
  parts (`c4`): the res4 trunk (stem..layer3, 1024 channels) is the backbone, the RPN runs on res4
  alone (anchors 32..512 x 3 ratios), RoIAlign 14x14 (aligned, stride 16) feeds the res5 stage
  (layer4) followed by the extra norm (Res5ROIHeadsExtraNorm), average-pooled into the box
  predictor; the mask branch reuses the res5 features of the foreground RoIs (deconv 2x2 -> 14x14
  masks).
* ``cityscapes_sem``: the FCN-16s-style model of the Detectron2 engine (`FCNDilatedHead`;
  `semantic`): R50 with res5 dilated (every res5 block, dilation 2, stride 16), NUM_CONVS x (3x3
  conv, dilation DILATION, norm, ReLU), a 1x1 classifier, logits upsampled bilinearly by
  COMMON_STRIDE.

Every model takes a list of float RGB (or BGR, per INPUT.FORMAT) images [3, H, W] in [0, 1];
PIXEL_MEAN / PIXEL_STD (0-255 units) are divided by 255. Training images arrive already resized by
the data pipeline; at test time the models resize to MIN_SIZE_TEST / MAX_SIZE_TEST themselves
(Detectron2's ResizeShortestEdge rule) and return predictions in the input image's coordinates.
The Detectron2-style pieces are small subclasses: `transform` (resizing), `anchors` (Detectron2's
DefaultAnchorGenerator: nominal strides, float sizes, size-major order, OFFSET), `box_coder`
(float32 decoding), `rpn` (RPN loss normalisation), `poolers` (RoIAlign with aligned=True and
Detectron2's level assignment), `roi_heads` (L1 box losses with SMOOTH_L1_BETA, keypoint RoIs with
a visible keypoint, Res5ROIHeads' shared res5, initialisations), `mask_targets` (GT masks cropped
and rasterised per RoI), `retinanet` (focal / smooth-L1 loss over an EMA of the foreground count);
`layers` and `backbones` hold the norms and the ResNet / FPN trunks. docs/torchvision_engine.md
lists what still differs.
"""
