"""The toy detector on digit canvases: the model and its losses (`detector`), VOC and COCO average
precision (`evaluation`), the training command and its table (`detect`), the part-offsets figure
(`viz`)."""
