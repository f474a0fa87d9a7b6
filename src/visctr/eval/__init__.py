"""Evaluation: metric functions (``metrics``, a pure leaf that imports nothing of visctr),
retrieval (``retrieval``) and CTR evaluation of trained models (``ctr``).

Nothing is imported here, so ``visctr.eval.metrics`` stays importable from any layer.
"""
