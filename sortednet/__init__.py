"""sortednet: nested sub-networks for unmodified Hugging Face transformers models."""

from .api import check_family, load, load_submodel, nest, read_metadata
from .bn_calibration import calibrate
from .importance import block_influence, reorder
from .many import ManyInOne, ManyInOneModel
from .nest import NestedModel
from .optim import optimizer
from .permute import apply_permutation
from .spec import NestingSpace, Subnet
from .stitch import Stitch, StitchConfig, StitchedModel, StitchSpace, stitch
from .testing import FamilyCheckError

__version__ = "0.1.0"
__all__ = [
    "FamilyCheckError",
    "ManyInOne",
    "ManyInOneModel",
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
    "check_family",
    "load",
    "load_submodel",
    "nest",
    "optimizer",
    "read_metadata",
    "reorder",
    "stitch",
]
