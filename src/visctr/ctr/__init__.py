"""Ranking: the CTR model (with the S3 debias network + gate of ``visctr.s3``, whose
serving transform is ``visctr.s3.DebiasTransform``), its training and inference.

Public API::

    train_ctr(world, embeddings, out_dir, cfg, seed, reference=None) -> Path
    predict_ctr(model_dir, world, embeddings, split) -> dict[str, np.ndarray]
    build_ctr_net(cfg, fmap, affinity, triplets=None) -> CTRNet   # cfg.arch from ARCHS

Evaluation lives one layer up, in ``visctr.eval`` (``visctr.eval.ctr.evaluate_ctr``,
``visctr.eval.retrieval.evaluate_retrieval``); ctr imports nothing from it (its training
loop scores validation with the metric functions of ``visctr.metrics``).

Modules, one job each: ``feature_map`` (the frozen feature encoding), ``visual`` (the
embeddings a model reads), ``stats`` (training-log statistics), ``batch`` (the ``Batch``
layout and its packer), ``stream`` (streaming, shuffled, sharded batches), ``model``
(networks and the ``ARCHS`` registry), ``trainer`` (the Lightning loop), ``training``
(train/predict entry points). Impression logs are read with ``visctr.world.logs``.
"""

from visctr.ctr.config import CTRConfig
from visctr.ctr.model import ARCHS, build_ctr_net
from visctr.ctr.training import predict_ctr, train_ctr

__all__ = [
    "ARCHS",
    "CTRConfig",
    "build_ctr_net",
    "predict_ctr",
    "train_ctr",
]
