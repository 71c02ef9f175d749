"""PASCAL VOC XML annotations (parsed and written) and split lists (pure functions, no image I/O)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import DataError, PathLike
from ..io import read_text_file


def canonical_class_name(name: str) -> str:
    """Normalise a class name for matching: lower case, letters and digits only ("tv/monitor" == "tvmonitor")."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def class_index_map(class_names: Sequence[str]) -> Dict[str, int]:
    """Map canonical class names to their indices (background included, at 0)."""
    return {canonical_class_name(name): index for index, name in enumerate(class_names)}


@dataclass(frozen=True)
class ObjectAnnotations:
    """The objects of one image.

    Attributes:
        boxes: float32 [N, 4] (x_min, y_min, x_max, y_max) in 0-based pixel-edge coordinates.
        labels: int64 [N] class indices in 1..num_classes-1.
        difficult: bool [N].
        size: (height, width) declared in the XML, or ``None`` when absent.
    """

    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray
    size: Optional[Tuple[int, int]]


def _text(node: ET.Element, tag: str, path: PathLike) -> str:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise DataError(path, f"annotation is missing <{tag}>")
    return child.text.strip()


def _number(node: ET.Element, tag: str, path: PathLike) -> float:
    text = _text(node, tag, path)
    try:
        return float(text)
    except ValueError as exc:
        raise DataError(path, f"<{tag}> is not a number: {text!r}") from exc


def parse_voc_xml(path: PathLike, class_to_index: Dict[str, int]) -> ObjectAnnotations:
    """Parse a VOC XML file.

    VOC stores 1-based inclusive pixel coordinates (integers or floats); they are converted to 0-based
    pixel-edge coordinates: ``x_min - 1`` and ``x_max`` unchanged.

    Raises:
        DataError: unreadable XML, an unknown class name, or a malformed box (non-numeric, zero or negative area).
    """
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise DataError(path, f"unreadable annotation XML ({exc})") from exc
    size = None
    size_node = root.find("size")
    if size_node is not None and size_node.find("width") is not None and size_node.find("height") is not None:
        size = (int(_number(size_node, "height", path)), int(_number(size_node, "width", path)))
    boxes, labels, difficult = [], [], []
    for obj in root.findall("object"):
        name = _text(obj, "name", path)
        index = class_to_index.get(canonical_class_name(name))
        if index is None or index == 0:
            known = ", ".join(sorted(k for k, v in class_to_index.items() if v > 0))
            raise DataError(path, f"unknown class name {name!r} (known: {known})")
        difficult_node = obj.find("difficult")
        is_difficult = difficult_node is not None and (difficult_node.text or "0").strip() in ("1", "true")
        box_node = obj.find("bndbox")
        if box_node is None:
            raise DataError(path, f"object {name!r} has no <bndbox>")
        x0, y0 = _number(box_node, "xmin", path) - 1.0, _number(box_node, "ymin", path) - 1.0
        x1, y1 = _number(box_node, "xmax", path), _number(box_node, "ymax", path)
        if x1 <= x0 or y1 <= y0:
            raise DataError(path, f"box of {name!r} has zero or negative area: {(x0 + 1, y0 + 1, x1, y1)} (VOC xmin, ymin, xmax, ymax)")
        boxes.append((x0, y0, x1, y1))
        labels.append(index)
        difficult.append(is_difficult)
    return ObjectAnnotations(
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        labels=np.asarray(labels, dtype=np.int64),
        difficult=np.asarray(difficult, dtype=bool),
        size=size,
    )


def _voc_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def voc_xml(
    image_id: str,
    size: Tuple[int, int],
    names: Sequence[str],
    boxes: np.ndarray,
    truncated: Optional[Sequence[bool]] = None,
    folder: str = "",
) -> bytes:
    """The VOC annotation XML of one image, as :func:`parse_voc_xml` reads it back.

    Args:
        image_id: the id (``<filename>`` is ``<id>.jpg``).
        size: (height, width) of the image.
        names: class name of each object.
        boxes: [N, 4] (x_min, y_min, x_max, y_max) in 0-based pixel-edge coordinates; written 1-based inclusive
            (``xmin = x_min + 1``, ``xmax = x_max``).
        truncated: per object, whether the image border cuts it (default: none is).
        folder: the ``<folder>`` text.
    """
    height, width = size
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = folder
    ET.SubElement(root, "filename").text = f"{image_id}.jpg"
    sz = ET.SubElement(root, "size")
    ET.SubElement(sz, "width").text = str(width)
    ET.SubElement(sz, "height").text = str(height)
    ET.SubElement(sz, "depth").text = "3"
    ET.SubElement(root, "segmented").text = "1"
    flags = [False] * len(names) if truncated is None else truncated
    for name, (x0, y0, x1, y1), cut in zip(names, boxes, flags):
        node = ET.SubElement(root, "object")
        ET.SubElement(node, "name").text = name
        ET.SubElement(node, "pose").text = "Unspecified"
        ET.SubElement(node, "truncated").text = str(int(cut))
        ET.SubElement(node, "difficult").text = "0"
        bb = ET.SubElement(node, "bndbox")
        for tag, val in (("xmin", x0 + 1), ("ymin", y0 + 1), ("xmax", x1), ("ymax", y1)):
            ET.SubElement(bb, tag).text = _voc_number(val)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8") + b"\n"


@dataclass(frozen=True)
class SplitEntry:
    """One line of a split list: the image id and, in the ``train_aug`` form, explicit relative paths."""

    image_id: str
    image_path: Optional[str] = None
    mask_path: Optional[str] = None


def read_split(path: PathLike) -> List[SplitEntry]:
    """Read ``ImageSets/Segmentation/<split>.txt``.

    Accepts one id per line (``2007_000032``) or the ``train_aug`` form
    (``/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png``).

    Raises:
        DataError: the file is missing, empty or not UTF-8 text (a byte-order mark is dropped), or lists an id
            twice.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "split file is missing")
    entries: List[SplitEntry] = []
    seen: Dict[str, int] = {}
    for number, raw in enumerate(read_text_file(path, "split file").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) == 1:
            entry = SplitEntry(parts[0])
        elif len(parts) == 2:
            entry = SplitEntry(Path(parts[0]).stem, parts[0].lstrip("/"), parts[1].lstrip("/"))
        else:
            raise DataError(path, f"line {number}: expected an id or 'image_path mask_path', got {line!r}")
        if entry.image_id in seen:
            raise DataError(path, f"duplicate id {entry.image_id!r} on lines {seen[entry.image_id]} and {number}")
        seen[entry.image_id] = number
        entries.append(entry)
    if not entries:
        raise DataError(path, "split file is empty")
    return entries
