"""Annotation cost estimates from measured annotation times in the literature.

- Image-level labels: about 20 s per image on PASCAL VOC -- Bearman, Russakovsky, Ferrari, Fei-Fei,
  "What's the Point: Semantic Segmentation with Point Supervision", ECCV 2016 (20.0 s/image for image-level
  labels; 239.7 s/image for full per-pixel masks).
- Full masks: about 240 s per image on PASCAL VOC -- Bearman et al., ECCV 2016 (above).
- Boxes: about 7 s per box with extreme clicking and about 35 s per box with classic box drawing --
  Papadopoulos, Uijlings, Keller, Ferrari, "Extreme clicking for efficient object annotation", ICCV 2017
  (7.0 s vs 34.5 s per box). The per-box cost multiplies the number of boxes of each image. Those box times
  are for drawing a box of a given class; an annotator first has to find which classes an image holds, so a
  box-annotated image also costs the image-level labelling time (20 s) on top of its boxes.
"""

from __future__ import annotations

from typing import Optional

IMAGE_LABEL_SECONDS_PER_IMAGE = 20.0
FULL_MASK_SECONDS_PER_IMAGE = 240.0
BOX_SECONDS_PER_BOX = {"extreme_clicking": 7.0, "classic": 35.0}


def annotation_hours(supervision: str, num_images: int, num_boxes: int = 0, box_protocol: str = "extreme_clicking",
                     num_box_images: Optional[int] = None) -> float:
    """Estimated annotation time in hours for ``num_images`` training images.

    Args:
        supervision: ``image``, ``box``, ``full`` or ``hybrid``.
        num_images: training images.
        num_boxes: boxes drawn (``box``: all boxes; ``hybrid``: the boxes of the box images only).
            Box images also pay the image-level labelling time (finding the classes before drawing).
        box_protocol: ``extreme_clicking`` (7 s/box) or ``classic`` (35 s/box).
        num_box_images: ``hybrid`` only: images annotated with boxes; the others get image-level labels.
    """
    if box_protocol not in BOX_SECONDS_PER_BOX:
        raise ValueError(f"box_protocol must be one of {sorted(BOX_SECONDS_PER_BOX)}, got {box_protocol!r}")
    per_box = BOX_SECONDS_PER_BOX[box_protocol]
    if supervision == "image":
        seconds = IMAGE_LABEL_SECONDS_PER_IMAGE * num_images
    elif supervision == "full":
        seconds = FULL_MASK_SECONDS_PER_IMAGE * num_images
    elif supervision == "box":
        seconds = per_box * num_boxes + IMAGE_LABEL_SECONDS_PER_IMAGE * num_images
    elif supervision == "hybrid":
        # every image gets its class labels; only the box images get boxes
        seconds = per_box * num_boxes + IMAGE_LABEL_SECONDS_PER_IMAGE * num_images
    else:
        raise ValueError(f"unknown supervision {supervision!r}")
    return seconds / 3600.0
