"""What pipeline stages hand each other: named artifacts, per image or whole.

A stage declaration (:mod:`.registry`) lists the artifacts it reads and writes by name; the planner connects
each read to the latest earlier stage that writes it. An artifact made of one file per image (``per_image``;
``files`` says where, in terms of the writing stage's outputs) can be written by several processes, image by
image; a whole one (a checkpoint) is written once. A stage of your own may write an artifact of its own:
:func:`register_artifact` says what it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

__all__ = ["Artifact", "ARTIFACTS", "register_artifact"]


@dataclass(frozen=True)
class Artifact:
    """One kind of stage output.

    Attributes:
        name: the name stages read and write it by.
        per_image: one file (or one per folder) for each image, so its images can be written by different
            processes; otherwise a whole (a checkpoint, a list) written once.
        files: where it lies, in terms of the writing stage's ``outputs`` (its ``stage.json``): a per-image
            artifact's file pattern (``{id}``: the image id), or the output keys of a whole one.
        doc: one line on what it holds.
    """

    name: str
    per_image: bool
    files: str
    doc: str = ""


ARTIFACTS: Dict[str, Artifact] = {}


def register_artifact(item: Artifact) -> Artifact:
    """Add an artifact kind (a second registration under the same name must be identical)."""
    known = ARTIFACTS.get(item.name)
    if known is not None and known != item:
        raise ValueError(f"artifact {item.name!r} is already registered differently: {known}")
    ARTIFACTS[item.name] = item
    return item


for _item in (
    Artifact("classifier", False, "checkpoint, class_path", "a trained CAM classifier"),
    Artifact("cams", True, "{cams_dir}/{id}.npz", "multi-scale CAMs of the present classes (float16)"),
    Artifact("labels", True, "{labels_dir}/{id}.png", "pseudo labels (uint8, 255 = ignore)"),
    Artifact("refiner", False, "checkpoint, class_path", "a trained affinity (or boundary) network"),
    Artifact("affinity_labels", True, "{affinity_labels_dir}/{id}.png",
             "confident foreground / background / ignore labels from the CAMs"),
    Artifact("box_masks", True, "{<initializer>_dir}/{id}.png", "the masks of every box initializer, and num_boxes"),
    Artifact("label_parts", False, "box_mask_dir, image_mask_dir, box_ids",
             "which images train on box masks and which on image-label masks"),
    Artifact("segmenter", False, "checkpoint", "a trained segmentation network"),
):
    register_artifact(_item)
