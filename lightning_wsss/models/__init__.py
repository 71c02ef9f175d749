"""Network building blocks shared by the tasks: timm backbones and weight loading."""

from .backbones import build_backbone, load_state_dict_file, remap_state_dict_by_order, load_backbone_weights

__all__ = ["build_backbone", "load_state_dict_file", "remap_state_dict_by_order", "load_backbone_weights"]
