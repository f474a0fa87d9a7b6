"""S2 click-supervised contrastive loss with a class-aware, false-negative-free pool.

Anchor: the query photo's embedding. Positive: the embedding of the item clicked for it.
Negatives: every other in-batch item plus an optional extra pool of catalog items (which
the caller draws class-aware, so same-category hard negatives stay in). A candidate never
counts as a negative when it is the anchor's own positive item (a duplicate in the batch
or pool) or any item clicked for the same query (from the batch itself, plus the known
``clicked_pairs``): those are false negatives, and pushing them away would teach the
encoder that two items a user found equally right are different.

Ids travel as tensors so the same function runs on embeddings gathered across DDP ranks
(``gather=True``). The loss is our formulation of the paper's outline (DESIGN.md §1):
InfoNCE with the masked pool, mean over anchors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from visctr.losses.distributed import gather_no_grad, gather_with_grad, is_distributed, rank
from visctr.precision import fp32

ITEM_ID_LIMIT = 2**31  # keys pack (query_id, item_id) into one int64
QUERY_ID_LIMIT = 2**32


def pair_keys(query_ids: torch.Tensor, item_ids: torch.Tensor) -> torch.Tensor:
    """One int64 key per (query_id, item_id) pair, for fast set membership (``torch.isin``)."""
    query_ids = query_ids.long()
    item_ids = item_ids.long()
    if query_ids.numel() and (int(query_ids.min()) < 0 or int(query_ids.max()) >= QUERY_ID_LIMIT):
        raise ValueError("query ids must be in [0, 2**32) to build pair keys")
    if item_ids.numel() and (int(item_ids.min()) < 0 or int(item_ids.max()) >= ITEM_ID_LIMIT):
        raise ValueError("item ids must be in [0, 2**31) to build pair keys")
    return query_ids * ITEM_ID_LIMIT + item_ids


def _as_keys(clicked_pairs: torch.Tensor) -> torch.Tensor:
    if clicked_pairs.ndim == 2 and clicked_pairs.shape[1] == 2:
        return pair_keys(clicked_pairs[:, 0], clicked_pairs[:, 1])
    if clicked_pairs.ndim == 1:
        return clicked_pairs.long()  # already keys from pair_keys
    raise ValueError(
        f"clicked_pairs must be [P, 2] (query_id, item_id) or 1-D pair keys, "
        f"got shape {tuple(clicked_pairs.shape)}"
    )


def false_negative_mask(
    anchor_query_ids: torch.Tensor,
    anchor_item_ids: torch.Tensor,
    candidate_item_ids: torch.Tensor,
    clicked_pairs: torch.Tensor | None = None,
) -> torch.Tensor:
    """Bool ``[B, C]``: True where candidate j must not be a negative for anchor i.

    That is: the candidate is anchor i's positive item, or any item clicked for anchor i's
    query according to ``clicked_pairs`` ([P, 2] pairs or 1-D :func:`pair_keys`). The
    entry of the positive itself is True too; the loss re-enables it as the positive.
    """
    same_item = anchor_item_ids[:, None] == candidate_item_ids[None, :]
    if clicked_pairs is None or clicked_pairs.numel() == 0:
        return same_item
    keys = pair_keys(
        anchor_query_ids[:, None].expand(-1, len(candidate_item_ids)),
        candidate_item_ids[None, :].expand(len(anchor_query_ids), -1),
    )
    clicked = torch.isin(keys, _as_keys(clicked_pairs).to(keys.device))
    return same_item | clicked


@fp32
def click_contrastive_loss(
    query_emb: torch.Tensor,
    item_emb: torch.Tensor,
    query_ids: torch.Tensor,
    item_ids: torch.Tensor,
    temperature: float = 0.1,
    extra_emb: torch.Tensor | None = None,
    extra_ids: torch.Tensor | None = None,
    clicked_pairs: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    gather: bool = False,
) -> torch.Tensor:
    """Masked InfoNCE of query photos against clicked items; mean over the B anchors.

    ``query_emb, item_emb [B, D]``: row i is a (query, clicked item) pair with ids
    ``query_ids[i], item_ids[i]``. ``extra_emb [M, D]`` with ``extra_ids [M]``: more
    negatives. Candidates are ``[in-batch items; extra]`` (in-batch from all ranks with
    ``gather=True``). False negatives are masked from the batch's own pairs plus
    ``clicked_pairs``; or pass a precomputed bool ``mask [B, C]`` (True = not a negative;
    local layout only, not with ``gather``). Embeddings are L2-normalised here.
    """
    b = query_emb.shape[0]
    if item_emb.shape[0] != b or len(query_ids) != b or len(item_ids) != b:
        raise ValueError("query_emb, item_emb, query_ids and item_ids need the same length")
    if (extra_emb is None) != (extra_ids is None):
        raise ValueError("pass extra_emb and extra_ids together")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    q = F.normalize(query_emb, dim=1)
    cand = F.normalize(item_emb, dim=1)
    cand_ids = item_ids.long()
    batch_q = query_ids.long()
    pos = torch.arange(b, device=q.device)
    if gather and is_distributed():
        if mask is not None:
            raise ValueError("a precomputed mask cannot be combined with gather=True")
        cand = gather_with_grad(cand)
        cand_ids = gather_no_grad(cand_ids)
        batch_q = gather_no_grad(batch_q)
        pos = pos + rank() * b
    batch_keys = pair_keys(batch_q, cand_ids)
    if extra_emb is not None:
        cand = torch.cat([cand, F.normalize(extra_emb, dim=1)])
        cand_ids = torch.cat([cand_ids, extra_ids.long()])
    logits = q @ cand.T / temperature
    if mask is None:
        known = (
            batch_keys
            if clicked_pairs is None
            else torch.cat([batch_keys, _as_keys(clicked_pairs).to(batch_keys.device)])
        )
        mask = false_negative_mask(query_ids.long(), item_ids.long(), cand_ids, known)
    elif mask.shape != logits.shape:
        raise ValueError(f"mask must be [B, C] = {tuple(logits.shape)}, got {tuple(mask.shape)}")
    mask = mask.clone()
    mask[torch.arange(b, device=q.device), pos] = False
    logits = logits.masked_fill(mask, float("-inf"))
    return F.cross_entropy(logits, pos)
