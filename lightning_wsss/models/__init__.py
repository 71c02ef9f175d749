"""The networks the tasks train, as plain ``nn.Module`` objects, and their backbones and weight loading.

* :mod:`~lightning_wsss.models.cam` -- :class:`CAMNet` (backbone + 1x1 classifier), :class:`ReCAMNet`;
* :mod:`~lightning_wsss.models.affinity` -- :class:`AffinityNet` (embedding), :class:`BoundaryNet` (IRN boundaries);
* :mod:`~lightning_wsss.models.deeplab` -- :func:`build_deeplab` (smp DeepLabV3 / V3+ with encoder weights);
* :mod:`~lightning_wsss.models.backbones`, :mod:`~lightning_wsss.models.trunk`,
  :mod:`~lightning_wsss.models.pretrained` -- timm backbones and pretrained weights that load offline.
"""

from .affinity import AffinityNet, BoundaryNet
from .backbones import build_backbone, load_backbone_weights, load_state_dict_file, remap_state_dict_by_order
from .cam import CAMNet, ReCAMNet
from .deeplab import build_deeplab, load_encoder_weights

__all__ = ["CAMNet", "ReCAMNet", "AffinityNet", "BoundaryNet", "build_deeplab", "load_encoder_weights",
           "build_backbone", "load_state_dict_file", "remap_state_dict_by_order", "load_backbone_weights"]
