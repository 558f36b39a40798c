"""blockswap-zoo: BlockSwap students (ICLR 2020) as a model zoo: genotypes, builders, search, training."""

from .blocks import BLOCK_TYPES, get_block_type
from .factory import create_model
from .genotype import Genotype, GenotypeError
from .models import build_model
from .pretrained import list_pretrained
from .registry import get_arch, list_models

__version__ = "0.1.0"

__all__ = [
    "BLOCK_TYPES",
    "Genotype",
    "GenotypeError",
    "build_model",
    "create_model",
    "get_arch",
    "get_block_type",
    "list_models",
    "list_pretrained",
]
