"""Ranking: the CTR model, the S3 debias network + gate, their training and evaluation.

Public API::

    train_ctr(world, embeddings, out_dir, cfg, seed, reference=None) -> Path
    predict_ctr(model_dir, world, embeddings, split) -> dict[str, np.ndarray]
    evaluate_ctr(model_dir, world, embeddings) -> dict[str, float]
    apply_debias(debias_path, vectors) -> np.ndarray
"""

from visctr.ctr.config import CTRConfig, DebiasConfig
from visctr.ctr.debias import apply_debias
from visctr.ctr.training import evaluate_ctr, predict_ctr, train_ctr

__all__ = ["CTRConfig", "DebiasConfig", "apply_debias", "evaluate_ctr", "predict_ctr", "train_ctr"]
