"""Serving artifacts: a TorchScript encoder, the debias network, a FAISS index, search."""

from visctr.serve.export import export_artifacts, search_image

__all__ = ["export_artifacts", "search_image"]
