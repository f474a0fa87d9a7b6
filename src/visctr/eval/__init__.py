"""Evaluation: retrieval (``retrieval``), CTR evaluation of trained models (``ctr``),
representation bias (``bias``), the simulated A/B test (``abtest``) and off-policy
estimates (``ope``). The metric functions they share are :mod:`visctr.metrics`, in the
base layer, which the CTR training loop also uses.
"""
