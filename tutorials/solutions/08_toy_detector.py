"""Solutions to the exercises of notebook 8, The toy detector."""


def iou(box_a, box_b):
    """Exercise 8.1: the area two boxes [x1, y1, x2, y2) share over the area they cover together."""
    width = max(0.0, min(box_a[2], box_b[2]) - max(box_a[0], box_b[0]))
    height = max(0.0, min(box_a[3], box_b[3]) - max(box_a[1], box_b[1]))
    shared = width * height
    area_a = (box_a[2] - box_a[0]) * (box_a[3] - box_a[1])
    area_b = (box_b[2] - box_b[0]) * (box_b[3] - box_b[1])
    return shared / (area_a + area_b - shared)
