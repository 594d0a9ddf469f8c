"""SCRFD (insightface `detection/scrfd`): what exists so far.

- `model`: the eight released architectures (`SPECS`) as Flax modules named like the mmdet checkpoints,
  raw outputs in the ONNX export's convention; checked against an independent torch re-statement;
- `weights`: the strict `.pth` key map (mmcv checkpoints and plain state dicts);
- `anchors`, `box_coding`: the static anchor tables and the matched distance coding pairs;
- `augment`: the training augmentation.

Not yet: the family contract object (detection with the mmdet and insightface test protocols, the
name-table entry), insightface's ONNX files, ATSS and the losses (the SCRFD issues).
"""
