"""visctr: fine-grained, unbiased image embeddings for CTR prediction in visual search."""

__version__ = "0.1.0"
