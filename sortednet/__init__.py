"""sortednet: nested sub-networks for unmodified Hugging Face transformers models."""

from .bn_calibration import calibrate
from .checkpoint import read_metadata
from .export import load_submodel
from .importance import block_influence, reorder
from .many import ManyInOne
from .nest import NestedModel, nest
from .permute import apply_permutation
from .restore import load
from .spec import NestingSpace, Subnet
from .stitch import Stitch, StitchConfig, StitchedModel, StitchSpace, stitch

__version__ = "0.1.0"
__all__ = [
    "ManyInOne",
    "NestedModel",
    "NestingSpace",
    "Stitch",
    "StitchConfig",
    "StitchSpace",
    "StitchedModel",
    "Subnet",
    "apply_permutation",
    "block_influence",
    "calibrate",
    "load",
    "load_submodel",
    "nest",
    "read_metadata",
    "reorder",
    "stitch",
]
