"""Stitchable networks (SN-Net, SN-Netv2): many networks from a family of pretrained models of one architecture.

stitched = sn.stitch({"small": deit_s, "large": deit_b}, calibration=loader)
with stitched.use("small:4>large:5"):
    logits = stitched(pixel_values=x).logits
"""

from .anchors import KINDS, AnchorKind, check_anchors
from .config import StitchConfig
from .fit import fit_stitches
from .layers import StitchingLayer
from .model import StitchedModel, stitch
from .space import Stitch, StitchSpace

__all__ = [
    "KINDS",
    "AnchorKind",
    "Stitch",
    "StitchConfig",
    "StitchSpace",
    "StitchedModel",
    "StitchingLayer",
    "check_anchors",
    "fit_stitches",
    "stitch",
]
