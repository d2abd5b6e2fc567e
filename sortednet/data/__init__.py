"""Lightning data modules: text classification, causal LM and image classification."""

from sortednet.data.image import ImageClassificationDataModule
from sortednet.data.lm import CausalLMDataModule, CharTokenizer
from sortednet.data.loader import ResumableDataLoader, ResumableSampler
from sortednet.data.text import TextClassificationDataModule

__all__ = [
    "CausalLMDataModule",
    "CharTokenizer",
    "ImageClassificationDataModule",
    "ResumableDataLoader",
    "ResumableSampler",
    "TextClassificationDataModule",
]
