"""S2: click-supervised contrastive fine-tuning, ``L = L_click + lambda_s1 * L_S1``.

Each step embeds the query photos and clicked items of a batch of click pairs, plus a
class-aware pool of extra catalog negatives, and applies the masked click loss
(:mod:`visctr.losses.click`); with ``lambda_s1 > 0`` it adds the S1 objective on a random
catalog batch, so the unbiased self-supervision keeps acting on every item (our reading
of the paper's "leveraging both unbiased self-supervision and click supervision").
"""

from __future__ import annotations

from typing import Any

import torch

from visctr.encoders.backbones import Encoder
from visctr.encoders.config import S2Config
from visctr.encoders.data import NegativePool
from visctr.encoders.methods.base import EncoderMethod
from visctr.encoders.methods.s1 import two_view_embeddings
from visctr.encoders.objectives import build_objective, head_spec
from visctr.encoders.probe import KnnProbe
from visctr.errors import ConfigError, InputError
from visctr.losses import click_contrastive_loss, pair_keys


def _random_flip(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    flip = torch.rand(len(x), generator=g, device=x.device) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def _fmt(spec: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in spec.items()) + "}"


class S2Method(EncoderMethod):
    """S2 as a LightningModule: click-contrastive fine-tuning, plus ``lambda_s1`` × the S1
    objective on catalog images.

    Args:
        encoder: the encoder to train, usually an S1 one (:func:`visctr.load_encoder`).
        cfg: :class:`~visctr.encoders.config.S2Config`.
        seed: fixes every random draw (by seed and global step).
        clicked_pairs: every clicked ``(query_id, item_id)`` of the log, int64 ``[N, 2]``:
            an item clicked for the query is never used as its negative.
        pool: the class-aware pool of extra negatives
            (:class:`~visctr.encoders.data.NegativePool`), or ``None`` for in-batch
            negatives only.
        probe: an optional online kNN probe.

    A batch is ``{"click": clicks, "catalog": {"image": images}}`` (``"catalog"`` only when
    ``cfg.lambda_s1 > 0``; with ``lambda_s1: 0`` the click dict alone may be the batch).
    ``clicks`` holds ``query_image`` and ``item_image`` (uint8 ``[B, C, H, W]``),
    ``query_id`` and ``item_id`` (int64 ``[B]``) and, with a pool, the item's
    ``category`` (int64 ``[B]``): one clicked (query photo, item photo) pair per row.
    """

    def __init__(
        self,
        encoder: Encoder,
        cfg: S2Config,
        seed: int,
        clicked_pairs: torch.Tensor,
        pool: NegativePool | None,
        probe: KnnProbe | None = None,
    ) -> None:
        super().__init__(encoder, cfg, seed, probe)
        self.objective = (
            build_objective(cfg.s1, encoder, "s2.s1.method") if cfg.lambda_s1 > 0 else None
        )
        keys = (
            clicked_pairs.long()
            if clicked_pairs.ndim == 1  # already pair keys (ClickPairs.clicked_keys)
            else pair_keys(clicked_pairs[:, 0], clicked_pairs[:, 1])
        )
        self.register_buffer("clicked_keys", torch.unique(keys), persistent=False)
        self.pool = pool

    def step_loss(self, batch: dict[str, Any]):
        cfg: S2Config = self.cfg
        clicks = batch["click"] if "click" in batch else batch
        q_img, it_img = clicks["query_image"], clicks["item_image"]
        b = len(q_img)
        g = self.generator()
        if cfg.pair_flip:
            q_img, it_img = _random_flip(q_img, g), _random_flip(it_img, g)
        parts: list[torch.Tensor] = [q_img, it_img]
        extra = None
        if self.pool is not None and cfg.extra_negatives > 0:
            extra = self.pool.sample(
                cfg.extra_negatives,
                clicks["category"],
                cfg.same_category_share,
                self.cpu_generator(1),
            )
            extra = {k: v.to(self.device) for k, v in extra.items()}
            if cfg.negatives_grad:
                parts.append(extra["image"])
        e = self.encoder(torch.cat(parts))  # one forward: BN sees queries and items together
        q, it = e[:b], e[b : 2 * b]
        extra_emb = extra_ids = None
        if extra is not None:
            extra_ids = extra["item_id"]
            if cfg.negatives_grad:
                extra_emb = e[2 * b :]
            else:
                with torch.no_grad():
                    extra_emb = self.encoder(extra["image"])
        l_click = click_contrastive_loss(
            q,
            it,
            clicks["query_id"],
            clicks["item_id"],
            cfg.temperature,
            extra_emb=extra_emb,
            extra_ids=extra_ids,
            clicked_pairs=self.clicked_keys,
            gather=True,
        )
        out = {"click": l_click.detach()}
        loss = l_click
        if self.objective is not None:
            views = two_view_embeddings(
                self.encoder, batch["catalog"]["image"], cfg.augment, self.generator(2)
            )
            l_s1 = self.objective(views)
            loss = loss + cfg.lambda_s1 * l_s1
            out["s1"] = l_s1.detach()
        return loss, out

    def after_optimizer_step(self) -> None:
        if self.objective is not None:
            self.objective.after_optimizer_step(self.encoder)

    def heads_state(self) -> dict[str, dict[str, Any]]:
        if self.objective is None:
            return {}
        return {"s1": self.objective.state_dict(), "s1_spec": self.objective.spec()}

    def load_s1_heads(self, heads: dict[str, Any], source: str) -> bool:
        """Continue the S1 heads that ``source`` (an ``encoder.pt``) was saved with.

        True if loaded; False when there is no S1 term (``lambda_s1: 0``) or ``source``
        has no S1 heads (e.g. a ResNet-C encoder), so the term starts with fresh heads.
        The saved objective must match ``s1`` in method and head sizes, else
        :class:`ConfigError`: the heads are never restarted silently.
        """
        if self.objective is None or "s1" not in heads:
            return False
        if "s1_spec" not in heads:
            raise InputError(f"{source}: has S1 heads but no s1_spec; re-run its pre-training")
        ours = self.objective.spec()
        got, want = head_spec(heads["s1_spec"]), head_spec(ours)
        if got != want:
            fix = ", ".join(f"s1.{k}: {v}" for k, v in got.items() if ours.get(k) != v)
            raise ConfigError(
                f"{source}: its S1 heads were trained with {_fmt(got)}, but the S2 config's "
                f"s1 asks for {_fmt(want)}; set {fix} in the S2 config (s2.s1.* in a "
                "'visctr run' file) to continue them, or lambda_s1: 0 to drop the S1 term"
            )
        try:
            self.objective.load_state_dict(heads["s1"])
        except RuntimeError as e:
            raise InputError(f"{source}: its S1 heads do not fit ({e})") from None
        return True
