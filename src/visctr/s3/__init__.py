"""S3: the debias network and gate inside the CTR model, its training terms and its export.

The paper ("Visual Encoding and Debiasing for CTR Prediction", CIKM 2022) gives only the
outline; the triplet rule, the alignment terms and the exposure-aware gate are our choices.
One module per part, lowest first:

- ``config``: :class:`DebiasConfig`, the run config's ``ctr.debias`` section;
- ``net``: ``DebiasNet`` (residual MLP, ``d = normalize(v + MLP(v))``), ``Gate``
  (``g·v + (1−g)·d``) and ``DebiasHead`` (both, what ``debias.pt`` holds);
- ``mining``: head→tail triplets with the S1 embeddings as the unbiased reference
  (``mine_triplets``, ``DisagreementMiner``);
- ``terms``: ``S3Debias``, the head as part of a CTR network with its loss
  (``weight·L_triplet`` + alignment + relational anchor; the loss functions are in
  :mod:`visctr.losses`), and ``debias_data``, what the terms read;
- ``artifact``: ``debias.pt`` (``export_debias``, ``load_debias``) and
  ``DebiasTransform``, which retrieval evaluation and serving apply to embeddings.

It sits between the encoders and the CTR model: ``visctr.ctr`` builds an ``S3Debias`` from
``ctr.debias`` and adds the term it returns to the click loss.

Before paying for S3 on your own logs, check that there is a bias for it to remove: a
``visctr run`` on your imported world reports the selection-bias gap Δ
(``results.json["selection_bias"]``, needs ``--retrieval`` labels) and the CTR head/tail
gap (``results.json["ctr_head_tail"]``, needs ``--random``), each with a CI. In visctr's
own worlds both are small or absent, and S3 stays within noise of its capacity control
(docs/results.md, "When does S3 help?"; docs/own-data.md, "Does S3 pay on your logs?").
"""

from visctr.s3.artifact import DebiasTransform, apply_debias, debias_transform, load_debias
from visctr.s3.config import DebiasConfig

__all__ = ["DebiasConfig", "DebiasTransform", "apply_debias", "debias_transform", "load_debias"]
