"""Ranking: the CTR model, the S3 debias network + gate, their training and inference.

Public API::

    train_ctr(world, embeddings, out_dir, cfg, seed, reference=None) -> Path
    predict_ctr(model_dir, world, embeddings, split) -> dict[str, np.ndarray]
    debias_transform(debias_path) -> DebiasTransform   # vectors -> debiased vectors
    apply_debias(debias_path, vectors) -> np.ndarray

Evaluation lives one layer up, in ``visctr.eval`` (``visctr.eval.ctr.evaluate_ctr``,
``visctr.eval.retrieval.evaluate_retrieval``); ctr imports only ``visctr.eval.metrics``.
"""

from visctr.ctr.config import CTRConfig, DebiasConfig
from visctr.ctr.debias import DebiasTransform, apply_debias, debias_transform
from visctr.ctr.training import predict_ctr, train_ctr

__all__ = [
    "CTRConfig",
    "DebiasConfig",
    "DebiasTransform",
    "apply_debias",
    "debias_transform",
    "predict_ctr",
    "train_ctr",
]
