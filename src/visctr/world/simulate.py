"""The visual-search world simulator (DESIGN §3).

A seeded world over real product photos: Zipf popularity, users with category
preferences, query photos taken through a fixed camera model, a legacy logging
policy that shows the top K by (cheap visual similarity + popularity boost), and a
position-biased click model. Besides the time-split logs it writes two unbiased
evaluation sets the logs never see: uniform-target retrieval queries and a
random-exposure impression set.

Everything is vectorised (no Python loop per impression); the same seed gives
byte-identical output.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from visctr.data.catalog import Catalog, CatalogConfig, load_catalog
from visctr.errors import InputError
from visctr.ids import IdIndex
from visctr.world.camera import CameraConfig, photograph
from visctr.world.head_tail import head_mask
from visctr.world.store import store_digest

DAY = 86_400


@dataclass
class ClickModelConfig:
    """P(click) = position_bias(p) × relevance × user modulation (hidden ground truth)."""

    exact_relevance: float = 0.85  # the item the user photographed
    category_relevance: float = 0.12  # same category; scaled by fine-grained likeness
    other_relevance: float = 0.01
    position_decay: float = 0.8  # position_bias(p) = 1 / (1 + p) ** position_decay
    affinity_strength: float = 0.5  # how much the user's category preference modulates clicks


@dataclass
class LoggingPolicyConfig:
    """The legacy system: cheap visual similarity + popularity boost, top K shown."""

    top_k: int = 10
    thumbnail: int = 7  # legacy visual similarity on thumbnail×thumbnail pixels
    popularity_boost: float = 0.03  # weight of log-popularity in the legacy score
    # Category-level blind spot (docs/results.md, "When does S3 help?"): this many whole
    # categories, drawn from a random stream of their own, are never shown by the legacy
    # system, while users still photograph their items (targets, random exposure and
    # retrieval queries are unchanged). 0: none, today's world.
    hidden_categories: int = 0

    def __post_init__(self) -> None:
        if self.hidden_categories < 0:
            raise ValueError(
                f"logging.hidden_categories must be >= 0, got {self.hidden_categories}"
            )


@dataclass
class SimConfig:
    """Every knob of the world; presets set the sizes."""

    catalog: CatalogConfig = field(default_factory=CatalogConfig)
    n_users: int = 1000
    n_queries: int = 30_000  # logged queries (train + test)
    # random-exposure queries (K random items each). Uniform exposure has a low CTR (~0.6%
    # on small), so this set needs ~10x the logged test queries for a stable AUC: with
    # 3,000 (188 clicks) AUC moved by ±0.02 between training seeds
    n_random_queries: int = 20_000
    n_retrieval_queries: int = 2_000  # uniform-target retrieval queries
    # more uniform-target retrieval queries, drawn from a random stream of their own after
    # every other query (0: none). The selection-bias gap's CI needs ~20,000 for a
    # half-width of 0.02 (benchmarks/selection_bias_ci.py); raising n_retrieval_queries
    # instead would change every draw of the world that comes after it.
    extra_retrieval_queries: int = 0
    zipf_exponent: float = 1.1
    user_concentration: float = 0.5  # Dirichlet alpha of user category preferences
    days: int = 14
    train_share: float = 0.8  # first share of time is train, the rest test
    head_share: float = 0.2  # top share of items by training impressions = head
    # Visual exposure bias (both 0 = the first world, where head and tail items are
    # visually exchangeable). appeal_strength: how strongly a hidden per-item appeal, a
    # smooth function of the image, multiplies click probability (exp(strength · appeal),
    # appeal standardised over the catalog). style_correlation: correlation between that
    # visual score and the Zipf popularity order (0 = popularity independent of looks).
    appeal_strength: float = 0.0
    style_correlation: float = 0.0
    # Cost-per-click bids (docs/world-format.md, "Bids"): lognormal, median `bid_median`
    # times a per-category factor exp(bid_category_spread · N(0,1)), item spread
    # `bid_sigma`; `bid_popularity_correlation` ties log-bid to log-popularity. Drawn from a
    # random stream of their own: no other array of the world depends on them, nor clicks.
    bid_median: float = 0.5
    bid_sigma: float = 0.5
    bid_category_spread: float = 0.5
    bid_popularity_correlation: float = 0.0
    logging: LoggingPolicyConfig = field(default_factory=LoggingPolicyConfig)
    clicks: ClickModelConfig = field(default_factory=ClickModelConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    chunk_size: int = 4096

    def __post_init__(self) -> None:
        for name in ("n_users", "n_queries", "n_random_queries", "n_retrieval_queries"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.extra_retrieval_queries < 0:
            raise ValueError("extra_retrieval_queries must be >= 0")
        if not 0 < self.train_share < 1:
            raise ValueError("train_share must be in (0, 1)")
        if not 0 < self.head_share < 1:
            raise ValueError("head_share must be in (0, 1)")
        if not -1 <= self.style_correlation <= 1:
            raise ValueError("style_correlation must be in [-1, 1]")
        if not 0 <= self.appeal_strength <= 5:
            raise ValueError("appeal_strength must be in [0, 5]")
        if not (np.isfinite(self.bid_median) and self.bid_median > 0):
            raise ValueError("bid_median must be a finite number > 0")
        for name in ("bid_sigma", "bid_category_spread"):
            if not 0 <= getattr(self, name) <= 5:
                raise ValueError(f"{name} must be in [0, 5]")
        if not -1 <= self.bid_popularity_correlation <= 1:
            raise ValueError("bid_popularity_correlation must be in [-1, 1]")


# ---------------------------------------------------------------------------- pieces


def zipf_popularity(
    n: int,
    exponent: float,
    rng: np.random.Generator,
    style: np.ndarray | None = None,
    correlation: float = 0.0,
) -> np.ndarray:
    """Popularity shares ∝ 1/rank^s. Ranks follow a random order of the items, or, with
    ``correlation`` ≠ 0, the order of ``correlation·style + √(1−correlation²)·noise``
    (``style`` standardised), so popular items tend to share a look."""
    if correlation == 0 or style is None:
        ranks = rng.permutation(n) + 1
    else:
        z = correlation * style + np.sqrt(1 - correlation**2) * rng.standard_normal(n)
        ranks = np.empty(n, dtype=np.int64)
        ranks[np.argsort(-z, kind="stable")] = np.arange(1, n + 1)
    pop = 1.0 / ranks.astype(np.float64) ** exponent
    return pop / pop.sum()


PIXEL_BUDGET = 2**22  # pixel values per chunk of a per-image pass (16 MB as float32)


def image_chunk(images: np.ndarray, chunk: int) -> int:
    """``chunk`` images, fewer for large ones: at most :data:`PIXEL_BUDGET` pixel values a
    chunk (28-px catalogs keep ``chunk``; a 224-px RGB one reads ~28 photos at a time,
    so the float copies and the camera's intermediates stay in the hundreds of MB)."""
    per = int(np.prod(images.shape[1:]))
    return max(1, min(int(chunk), PIXEL_BUDGET // max(per, 1)))


def appeal_scores(images: np.ndarray, seed: int, chunk: int = 4096) -> np.ndarray:
    """Hidden per-item appeal: a fixed random projection of an edge-orientation histogram
    (8 orientations × 4×4 cells of Sobel gradient energy), standardised over the catalog.

    Smooth in image content (similar images get similar appeal) and deliberately none of
    the features anything trains on: not the legacy policy's thumbnail, not the click
    model's pixel likeness, not an encoder.
    """
    import torch.nn.functional as F

    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    kernels = torch.stack([sobel, sobel.T]).unsqueeze(1)  # [2, 1, 3, 3]
    centres = torch.arange(8) * (np.pi / 8)
    feats = []
    chunk = image_chunk(images, chunk)  # per image: the result does not depend on it
    for s in range(0, len(images), chunk):
        x = torch.from_numpy(np.ascontiguousarray(images[s : s + chunk])).float()
        x = x.mean(1, keepdim=True) / 255.0
        g = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernels)
        mag = g.pow(2).sum(1, keepdim=True).sqrt()  # [B, 1, H, W]
        ang = torch.atan2(g[:, 1:2], g[:, 0:1]).remainder(np.pi)  # orientation in [0, π)
        d = (ang - centres.view(1, 8, 1, 1)).abs()
        w = torch.clamp(1 - torch.minimum(d, np.pi - d) / (np.pi / 8), min=0)  # soft bins
        hist = F.adaptive_avg_pool2d(w * mag, 4).flatten(1)  # [B, 128]
        feats.append(F.normalize(hist, dim=1))
    f = torch.cat(feats)
    proj = torch.randn(f.shape[1], generator=torch.Generator().manual_seed(seed + 7))
    a = (f @ proj).double().numpy()
    return ((a - a.mean()) / max(a.std(), 1e-12)).astype(np.float64)


def appeal_multiplier(appeal: np.ndarray, strength: float) -> np.ndarray:
    """``exp(strength·appeal)`` scaled to mean 1 over the catalog (1 everywhere at 0)."""
    if strength == 0:
        return np.ones_like(appeal, dtype=np.float64)
    m = np.exp(strength * appeal)
    return m / m.mean()


BID_STREAM = 0xB1D  # the bids' random stream, apart from everything else the world draws


def draw_bids(
    categories: np.ndarray, n_categories: int, popularity: np.ndarray, cfg: SimConfig, seed: int
) -> np.ndarray:
    """Hidden cost-per-click bid per item (> 0): lognormal around a per-category median.

    ``log bid = log(bid_median) + bid_category_spread · c[category] + bid_sigma · z`` with
    ``c`` standard normal per category and ``z = ρ·std(log popularity) + √(1−ρ²)·noise``
    (ρ = ``bid_popularity_correlation``). From ``default_rng([seed, BID_STREAM])``: no other
    array of the world consumes these draws, and the click model never reads a bid."""
    rng = np.random.default_rng([int(seed), BID_STREAM])
    cat_factor = rng.standard_normal(n_categories)
    noise = rng.standard_normal(len(categories))
    rho = cfg.bid_popularity_correlation
    z = noise
    if rho != 0:
        lp = np.log(popularity)
        lp = (lp - lp.mean()) / max(lp.std(), 1e-12)
        z = rho * lp + np.sqrt(1 - rho**2) * noise
    log_bid = (
        np.log(cfg.bid_median)
        + cfg.bid_category_spread * cat_factor[np.asarray(categories)]
        + cfg.bid_sigma * z
    )
    return np.exp(log_bid).astype(np.float64)


def sample_targets(
    user_ids: np.ndarray,
    affinity: np.ndarray,
    categories: np.ndarray,
    popularity: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Item index per query, P(i | u) ∝ popularity_i × affinity_u[category_i]."""
    n_cat = affinity.shape[1]
    mass = np.bincount(categories, weights=popularity, minlength=n_cat)  # [C]
    p_cat = affinity[user_ids] * mass[None, :]
    p_cat /= p_cat.sum(1, keepdims=True)
    cum = np.cumsum(p_cat, axis=1)
    r = rng.random(len(user_ids))[:, None]
    cat = np.minimum((r > cum).sum(1), n_cat - 1)
    # within the category ∝ popularity: items sorted by category, one cumulative array
    order = np.argsort(categories, kind="stable")
    pop_sorted = popularity[order]
    cat_sorted = categories[order]
    starts = np.searchsorted(cat_sorted, np.arange(n_cat), side="left")
    cum_pop = np.cumsum(pop_sorted)
    before = np.where(starts > 0, cum_pop[np.maximum(starts - 1, 0)], 0.0)
    draw = before[cat] + rng.random(len(user_ids)) * mass[cat]
    pos = np.searchsorted(cum_pop, draw, side="right")
    ends = np.searchsorted(cat_sorted, np.arange(n_cat), side="right")
    pos = np.clip(pos, starts[cat], ends[cat] - 1)
    return order[pos]


PIXEL_SIDE = 32  # the click model's likeness reads images at most this many pixels a side
FEATURE_CHUNK = 4096  # images read (from a memory-mapped store) per step of a feature pass


def _per_image(
    images: np.ndarray, rows: np.ndarray | None, fn, width: int, chunk: int
) -> torch.Tensor:
    """``fn`` (float ``[b, C, H, W]`` -> ``[b, width]``) over ``images[rows]`` (all images
    when ``rows`` is None), ``chunk`` images at a time: a memory-mapped store is never
    read whole, and the result does not depend on ``chunk``."""
    n = len(images) if rows is None else len(rows)
    out = torch.empty(n, width)
    chunk = image_chunk(images, chunk)
    for s in range(0, n, chunk):
        part = images[s : s + chunk] if rows is None else images[rows[s : s + chunk]]
        out[s : s + len(part)] = fn(torch.from_numpy(np.ascontiguousarray(part)).float())
    return out


def thumbnails(
    images: np.ndarray, size: int, rows: np.ndarray | None = None, chunk: int = FEATURE_CHUNK
) -> torch.Tensor:
    """Centred, L2-normalised size×size grey thumbnails: the legacy visual feature
    (of ``images[rows]`` when ``rows`` is given)."""

    def fn(x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.adaptive_avg_pool2d(x.mean(1, keepdim=True), size).flatten(1)
        x = x - x.mean(1, keepdim=True)
        return torch.nn.functional.normalize(x, dim=1)

    return _per_image(images, rows, fn, size * size, chunk)


def pixel_vectors(
    images: np.ndarray, rows: np.ndarray | None = None, chunk: int = FEATURE_CHUNK
) -> torch.Tensor:
    """Centred, normalised pixels: the click model's hidden likeness (of ``images[rows]``
    when ``rows`` is given). Images of up to :data:`PIXEL_SIDE` pixels a side are read at
    full resolution; larger ones (a 224-px photo catalog) area-averaged to that side
    first, so the likeness table stays ``C·32·32`` floats an item whatever the photos."""
    _, c, h, w = images.shape
    big = h > PIXEL_SIDE or w > PIXEL_SIDE
    width = c * PIXEL_SIDE * PIXEL_SIDE if big else c * h * w

    def fn(x: torch.Tensor) -> torch.Tensor:
        if big:
            x = torch.nn.functional.adaptive_avg_pool2d(x, PIXEL_SIDE)
        x = x.flatten(1)
        x = x - x.mean(1, keepdim=True)
        return torch.nn.functional.normalize(x, dim=1)

    return _per_image(images, rows, fn, width, chunk)


def click_probability(
    shown: np.ndarray,
    positions: np.ndarray,
    targets: np.ndarray,
    user_aff: np.ndarray,
    categories: np.ndarray,
    likeness: np.ndarray,
    cfg: ClickModelConfig,
    appeal: np.ndarray | None = None,
) -> np.ndarray:
    """P(click) for shown items ``[Q, K]`` (item indices) at ``positions`` ``[Q, K]``;
    ``appeal``: per-item click multiplier (``appeal_multiplier``), none when omitted."""
    n_cat = user_aff.shape[1]
    exact = shown == targets[:, None]
    same = categories[shown] == categories[targets][:, None]
    rel = np.where(
        exact,
        cfg.exact_relevance,
        np.where(
            same,
            cfg.category_relevance * (0.25 + 0.75 * np.clip(likeness, 0, 1)),
            cfg.other_relevance,
        ),
    )
    aff = np.take_along_axis(user_aff, categories[shown], axis=1) * n_cat  # 1 = neutral
    mod = np.clip(aff, 0.2, 3.0) ** cfg.affinity_strength
    pos_bias = 1.0 / (1.0 + positions) ** cfg.position_decay
    if appeal is not None:
        rel = rel * appeal[shown]
    return np.clip(pos_bias * rel * mod, 0.0, 1.0)


# ---------------------------------------------------------------------------- world


@dataclass
class WorldArrays:
    """The simulated world in memory, before it is written."""

    catalog: Catalog
    popularity: np.ndarray
    appeal: np.ndarray  # hidden per-item appeal score (standardised)
    affinity: np.ndarray
    queries: dict[str, np.ndarray]
    query_images: np.ndarray
    impressions: dict[str, dict[str, np.ndarray]]
    summary: dict
    bid: np.ndarray | None = None  # hidden cost-per-click bid per item (draw_bids)


def _photograph_all(
    images: np.ndarray,
    targets: np.ndarray,
    cfg: SimConfig,
    seed: int,
    desc: str,
    out_path: Path | None = None,
    extra: tuple[np.ndarray, int] | None = None,
) -> np.ndarray:
    """A photo of ``images[targets[i]]`` for every ``i``, ``cfg.chunk_size`` at a time;
    with ``out_path`` they go to that ``.npy`` file chunk by chunk and come back as a
    ``visctr.io.NpyRows`` store (memory flat in the number of photos).

    ``extra``: (targets, seed) of more photos after those, taken with a camera generator
    of their own, so the photos before them do not depend on whether there are any."""
    from visctr.data.catalog import NpyWriter

    segments = [(targets, seed)] + ([extra] if extra is not None and len(extra[0]) else [])
    total = sum(len(t) for t, _ in segments)
    shape = (total, *images.shape[1:])
    chunk = image_chunk(images, cfg.chunk_size)  # = chunk_size for 28-px worlds
    writer = NpyWriter(out_path, shape) if out_path is not None else None
    out = np.empty(shape, dtype=np.uint8) if writer is None else None
    at = 0
    try:
        for part, part_seed in segments:
            g = torch.Generator().manual_seed(part_seed)
            for s in tqdm(
                range(0, len(part), chunk),
                desc=desc,
                leave=False,
                disable=True if total < 4 * chunk else None,  # None: a terminal only
            ):
                block = photograph(images[part[s : s + chunk]], cfg.camera, g)
                if writer is None:
                    out[at : at + len(block)] = block
                else:
                    writer.write(block)
                at += len(block)
    finally:
        if writer is not None:
            writer.f.close()
    if writer is None:
        return out
    writer.close()
    from visctr.io import NpyRows

    return NpyRows(out_path)  # read back a chunk at a time, never mapped whole


HIDDEN_STREAM = 0x41DE  # the hidden categories' random stream
EXTRA_RETRIEVAL_STREAM = 0x5E7  # the extra retrieval queries' random stream


def hidden_categories(n_categories: int, count: int, seed: int) -> np.ndarray:
    """The ``count`` categories the legacy system never shows (sorted category indices),
    drawn from ``default_rng([seed, HIDDEN_STREAM])``: nothing else the world draws
    depends on them."""
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    if count >= n_categories:
        raise InputError(
            f"logging.hidden_categories={count} must be below the catalog's "
            f"{n_categories} categories (the legacy system has to show something)"
        )
    rng = np.random.default_rng([int(seed), HIDDEN_STREAM])
    return np.sort(rng.choice(n_categories, size=count, replace=False)).astype(np.int64)


def legacy_hidden(world) -> np.ndarray | None:
    """Per item row of ``world.items``, whether the legacy system never shows it (the
    categories ``logging.hidden_categories`` drew, named in ``world.json``'s summary);
    ``None`` when it may show every item."""
    names = world.meta.get("summary", {}).get("hidden_categories") or []
    if not names:
        return None
    cats = [list(world.meta["category_names"]).index(n) for n in names]
    return np.isin(np.asarray(world.items["category"]), cats)


def legacy_scores(
    q: torch.Tensor, item_thumbs: torch.Tensor, log_pop: torch.Tensor, cfg: SimConfig,
    hidden: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """The legacy score ``[Q, N]`` of query thumbnails ``q``: thumbnail cosine + popularity
    boost, ``-inf`` for ``hidden`` items (bool ``[N]``), which it never shows."""
    score = q @ item_thumbs.T + cfg.logging.popularity_boost * log_pop[None, :]
    if hidden is not None:
        score.masked_fill_(hidden[None, :], float("-inf"))
    return score


def _legacy_top_k(
    query_images: np.ndarray,
    item_thumbs: torch.Tensor,
    log_pop: torch.Tensor,
    cfg: SimConfig,
    hidden: np.ndarray | None = None,
) -> np.ndarray:
    """Top K item indices per query photo by the legacy score; ``hidden`` (bool per item):
    items it never shows."""
    k = min(cfg.logging.top_k, item_thumbs.shape[0])
    mask = torch.from_numpy(hidden) if hidden is not None and hidden.any() else None
    out = np.empty((len(query_images), k), dtype=np.int64)
    # keep the score block at <= 2^24 floats (64 MB) whatever the catalog size
    chunk = max(64, min(cfg.chunk_size, 2**24 // item_thumbs.shape[0]))
    chunk = min(chunk, image_chunk(query_images, chunk))  # large photos: fewer at a time
    for s in tqdm(
        range(0, len(query_images), chunk),
        desc="logging policy",
        leave=False,
        disable=True if len(query_images) < 4 * chunk else None,  # None: a terminal only
    ):
        q = thumbnails(query_images[s : s + chunk], cfg.logging.thumbnail)
        score = legacy_scores(q, item_thumbs, log_pop, cfg, mask)
        out[s : s + len(q)] = score.topk(k, dim=1).indices.numpy()
    return out


def _likeness(shown: np.ndarray, targets: np.ndarray, pix: torch.Tensor, chunk: int) -> np.ndarray:
    out = np.empty(shown.shape, dtype=np.float32)
    for s in range(0, len(shown), chunk):
        a = pix[torch.from_numpy(shown[s : s + chunk])]  # [q, K, D]
        b = pix[torch.from_numpy(targets[s : s + chunk])]  # [q, D]
        out[s : s + chunk] = torch.einsum("qkd,qd->qk", a, b).numpy()
    return out


def _impressions(
    qids: np.ndarray,
    uids: np.ndarray,
    ts: np.ndarray,
    shown: np.ndarray,
    positions: np.ndarray,
    clicked: np.ndarray,
    item_ids: np.ndarray,
) -> dict:
    k = shown.shape[1]
    return {
        "query_id": np.repeat(qids, k).astype(np.int64),
        "user_id": np.repeat(uids, k).astype(np.int64),
        "item_id": item_ids[shown.ravel()].astype(np.int64),
        "position": positions.ravel().astype(np.int32),
        "clicked": clicked.ravel().astype(np.int8),
        "timestamp": np.repeat(ts, k).astype(np.int64),
    }


def simulate_arrays(
    cfg: SimConfig,
    seed: int,
    catalog: Catalog | None = None,
    query_images_out: Path | None = None,
) -> WorldArrays:
    """Build the world (see :func:`simulate` to write it). The catalog's images may be a
    store on disk (``visctr.io.NpyRows`` or a memory map: they are read in chunks); with
    ``query_images_out`` the query photos are written to that ``.npy`` file as they are
    taken and come back as such a store."""
    t0 = time.perf_counter()
    cat = catalog if catalog is not None else load_catalog(cfg.catalog, seed=seed)
    n = len(cat)
    if n < cfg.logging.top_k:
        raise InputError(
            f"{cat.source}: catalog has {n} items, fewer than top_k={cfg.logging.top_k}"
        )
    # the blind spot first: a bad setting fails before any photo is taken
    hidden_cats = hidden_categories(cat.n_categories, cfg.logging.hidden_categories, seed)
    hidden = np.isin(cat.categories, hidden_cats) if hidden_cats.size else None
    if hidden is not None and int((~hidden).sum()) < cfg.logging.top_k:
        raise InputError(
            f"logging.hidden_categories={cfg.logging.hidden_categories} leaves "
            f"{int((~hidden).sum())} items to show, fewer than top_k={cfg.logging.top_k}"
        )
    rng = np.random.default_rng(seed)
    appeal = appeal_scores(cat.images, seed, cfg.chunk_size)
    popularity = zipf_popularity(n, cfg.zipf_exponent, rng, appeal, cfg.style_correlation)
    mult = appeal_multiplier(appeal, cfg.appeal_strength)
    n_cat = cat.n_categories
    affinity = rng.dirichlet(np.full(n_cat, cfg.user_concentration), size=cfg.n_users)
    affinity = affinity.astype(np.float32)

    # Logged queries: time-ordered, a user photographs a target (∝ pop × preference).
    nq = cfg.n_queries
    ts = np.sort(rng.integers(0, cfg.days * DAY, size=nq))
    users = rng.integers(0, cfg.n_users, size=nq)
    targets = sample_targets(users, affinity, cat.categories, popularity, rng)
    split_t = int(cfg.train_share * cfg.days * DAY)
    split = np.where(ts < split_t, "train", "test")

    # Random-exposure queries (test period) and uniform retrieval queries.
    nr, nv = cfg.n_random_queries, cfg.n_retrieval_queries
    r_ts = np.sort(rng.integers(split_t, cfg.days * DAY, size=nr))
    r_users = rng.integers(0, cfg.n_users, size=nr)
    r_targets = sample_targets(r_users, affinity, cat.categories, popularity, rng)
    v_ts = np.sort(rng.integers(split_t, cfg.days * DAY, size=nv))
    v_users = rng.integers(0, cfg.n_users, size=nv)
    v_targets = rng.integers(0, n, size=nv)
    # extra retrieval queries: a stream of their own, so nothing above or below moves
    nx = cfg.extra_retrieval_queries
    xrng = np.random.default_rng([int(seed), EXTRA_RETRIEVAL_STREAM])
    x_ts = np.sort(xrng.integers(split_t, cfg.days * DAY, size=nx))
    x_users = xrng.integers(0, cfg.n_users, size=nx)
    x_targets = xrng.integers(0, n, size=nx)
    x_camera_seed = int(xrng.integers(0, 2**62))

    all_targets = np.concatenate([targets, r_targets, v_targets])
    qimages = _photograph_all(
        cat.images, all_targets, cfg, seed + 1, "query photos", query_images_out,
        extra=(x_targets, x_camera_seed),
    )  # fmt: skip

    # Logging policy on logged queries.
    thumbs = thumbnails(cat.images, cfg.logging.thumbnail, chunk=cfg.chunk_size)
    log_pop = torch.from_numpy(np.log(popularity / popularity.max())).float()
    shown = _legacy_top_k(qimages[:nq], thumbs, log_pop, cfg, hidden)
    k = shown.shape[1]
    positions = np.broadcast_to(np.arange(k), shown.shape)

    # Random exposure: K distinct items uniformly at random, random order.
    r_shown = rng.integers(0, n, size=(nr, k))
    for _ in range(100):  # resample rows with duplicates (rare when n >> k)
        srt = np.sort(r_shown, 1)
        dup = (srt[:, 1:] == srt[:, :-1]).any(1)
        if not dup.any():
            break
        r_shown[dup] = rng.integers(0, n, size=(int(dup.sum()), k))
    r_positions = np.broadcast_to(np.arange(k), r_shown.shape)

    pix = pixel_vectors(cat.images, chunk=cfg.chunk_size)
    like = _likeness(shown, targets, pix, cfg.chunk_size)
    p = click_probability(
        shown, positions, targets, affinity[users], cat.categories, like, cfg.clicks, mult
    )
    clicked = rng.random(p.shape) < p
    r_like = _likeness(r_shown, r_targets, pix, cfg.chunk_size)
    rp = click_probability(
        r_shown, r_positions, r_targets, affinity[r_users], cat.categories, r_like, cfg.clicks, mult
    )
    r_clicked = rng.random(rp.shape) < rp

    qid = np.arange(nq + nr + nv + nx, dtype=np.int64)
    queries = {
        "query_id": qid,
        "user_id": np.concatenate([users, r_users, v_users, x_users]).astype(np.int64),
        "target_item_id": cat.item_ids[np.concatenate([all_targets, x_targets])].astype(np.int64),
        "timestamp": np.concatenate([ts, r_ts, v_ts, x_ts]).astype(np.int64),
        "split": np.concatenate([split, np.full(nr, "random"), np.full(nv + nx, "retrieval")]),
        "image_row": qid.copy(),
    }
    tr = split == "train"
    te = ~tr
    impressions = {
        "train": _impressions(
            qid[:nq][tr], users[tr], ts[tr], shown[tr], positions[tr], clicked[tr], cat.item_ids
        ),
        "test": _impressions(
            qid[:nq][te], users[te], ts[te], shown[te], positions[te], clicked[te], cat.item_ids
        ),
        "random": _impressions(
            qid[nq : nq + nr], r_users, r_ts, r_shown, r_positions, r_clicked, cat.item_ids
        ),
    }
    if len(impressions["train"]["item_id"]) == 0:
        raise InputError("simulation produced an empty train split; raise n_queries or train_share")
    train_counts = np.bincount(shown[tr].ravel(), minlength=n)
    summary = {
        "items": n,
        "categories": n_cat,
        "users": cfg.n_users,
        "queries": {
            "train": int(tr.sum()),
            "test": int(te.sum()),
            "random": nr,
            "retrieval": nv + nx,
        },
        "impressions": {s: len(v["item_id"]) for s, v in impressions.items()},
        "clicks": {s: int(v["clicked"].sum()) for s, v in impressions.items()},
        "ctr": {s: float(v["clicked"].mean()) for s, v in impressions.items()},
        "never_shown_share_train": float((train_counts == 0).mean()),
        "random_exposure_never_shown_share": float(
            (np.bincount(r_shown.ravel(), minlength=n) == 0).mean()
        ),
        "top_k": k,
        "appeal_strength": cfg.appeal_strength,
        "style_correlation": cfg.style_correlation,
        # how far exposure follows looks: Pearson correlation of appeal and log-popularity
        "appeal_popularity_correlation": float(np.corrcoef(appeal, np.log(popularity))[0, 1]),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if hidden is not None:  # only when the knob is on: today's summary stays as it was
        summary["hidden_categories"] = [cat.category_names[c] for c in hidden_cats]
        summary["hidden_items_share"] = float(hidden.mean())
    bid = draw_bids(cat.categories, n_cat, popularity, cfg, seed)
    summary["bid_median"] = float(np.median(bid))
    summary["bid_log_popularity_correlation"] = float(
        np.corrcoef(np.log(bid), np.log(popularity))[0, 1]
    )
    return WorldArrays(
        cat, popularity, appeal, affinity, queries, qimages, impressions, summary, bid
    )


def write_world(w: WorldArrays, cfg: SimConfig, seed: int, out: Path) -> dict:
    """Write a world directory atomically (docs/world-format.md)."""
    from visctr.io import atomic_dir

    with atomic_dir(out, kind="world") as tmp:
        return _write_world_into(tmp, w, cfg, seed, images_written=False)


def _write_world_into(
    tmp: Path, w: WorldArrays, cfg: SimConfig, seed: int, images_written: bool
) -> dict:
    """The world's files in the (temporary) directory ``tmp``; ``images_written``: its
    ``images/items.npy`` and ``images/queries.npy`` are already there (:func:`simulate`)."""
    import pyarrow as pa

    from visctr.config import to_dict
    from visctr.io import save_npy, write_json, write_parquet

    cat = w.catalog
    n = len(cat)
    train = w.impressions["train"]
    rows = IdIndex(cat.item_ids).rows(train["item_id"], strict=True, what="item_id")
    counts = np.bincount(rows, minlength=n).astype(np.int64)
    is_head = head_mask(counts, cfg.head_share)
    summary = dict(w.summary)
    summary["head_items"] = int(is_head.sum())
    summary["tail_items"] = int(n - is_head.sum())
    summary["head_share_of_train_impressions"] = float(counts[is_head].sum() / max(counts.sum(), 1))
    tail = ~is_head
    summary["head_tail_appeal_gap"] = (
        float(w.appeal[is_head].mean() - w.appeal[tail].mean())
        if is_head.any() and tail.any()
        else 0.0
    )
    (tmp / "images").mkdir(exist_ok=True)
    (tmp / "impressions").mkdir()
    if not images_written:
        save_npy(cat.images, tmp / "images" / "items.npy")
        save_npy(w.query_images, tmp / "images" / "queries.npy")
    write_parquet(
        pa.table(
            {
                "item_id": pa.array(cat.item_ids, pa.int64()),
                "category": pa.array(cat.categories, pa.int32()),
                "image_row": pa.array(np.arange(n), pa.int64()),
                "popularity": pa.array(w.popularity, pa.float64()),
                "appeal": pa.array(w.appeal, pa.float64()),
                **({"bid": pa.array(w.bid, pa.float64())} if w.bid is not None else {}),
                "train_impressions": pa.array(counts, pa.int64()),
                "is_head": pa.array(is_head, pa.bool_()),
                **(
                    {"item_key": pa.array(cat.item_keys.tolist(), pa.string())}
                    if cat.item_keys is not None
                    else {}
                ),
            }
        ),
        tmp / "items.parquet",
    )
    write_parquet(
        pa.table(
            {
                "user_id": pa.array(np.arange(len(w.affinity)), pa.int64()),
                "affinity": pa.array(list(w.affinity), pa.list_(pa.float32())),
            }
        ),
        tmp / "users.parquet",
    )
    q = w.queries
    write_parquet(
        pa.table(
            {
                "query_id": pa.array(q["query_id"], pa.int64()),
                "user_id": pa.array(q["user_id"], pa.int64()),
                "target_item_id": pa.array(q["target_item_id"], pa.int64()),
                "timestamp": pa.array(q["timestamp"], pa.int64()),
                "split": pa.array(q["split"].tolist(), pa.string()),
                "image_row": pa.array(q["image_row"], pa.int64()),
            }
        ),
        tmp / "queries.parquet",
    )
    types = {
        "query_id": pa.int64(),
        "user_id": pa.int64(),
        "item_id": pa.int64(),
        "position": pa.int32(),
        "clicked": pa.int8(),
        "timestamp": pa.int64(),
    }
    for split, cols in w.impressions.items():
        write_parquet(
            pa.table({c: pa.array(cols[c], t) for c, t in types.items()}),
            tmp / "impressions" / f"{split}.parquet",
            row_group_size=262_144,
        )
    meta = {
        "format": 1,
        "source": "simulated",
        "seed": seed,
        "config": to_dict(cfg),
        "category_names": list(cat.category_names),
        "image_shape": list(cat.images.shape[1:]),
        "catalog_source": cat.source,
        "head_share": cfg.head_share,
        "summary": summary,
    }
    write_json(meta, tmp / "world.json")
    store_digest(tmp)  # hashed once, here: later runs check sizes and mtimes
    return summary


def simulate(cfg: SimConfig, seed: int, out: str | Path, workers: int | None = None) -> dict:
    """Simulate a world and write it to ``out`` (atomically). Returns the summary.

    ``workers``: processes decoding an image-folder or manifest catalog (``None``: every
    core); the world does not depend on it."""
    from visctr.io import atomic_dir, check_out_dir

    check_out_dir(out, "world")  # before the work, not only when renaming into place
    with atomic_dir(Path(out), kind="world") as tmp:
        # the images go straight into the world's store and are read back memory-mapped:
        # memory never holds the catalog's or the queries' photos whole
        (tmp / "images").mkdir()
        from visctr.io import NpyRows

        cat = load_catalog(
            cfg.catalog, seed=seed, images_out=tmp / "images" / "items.npy", workers=workers
        )
        cat.images = NpyRows(tmp / "images" / "items.npy")  # read in chunks, not mapped
        w = simulate_arrays(cfg, seed, cat, tmp / "images" / "queries.npy")
        return _write_world_into(tmp, w, cfg, seed, images_written=True)


def format_summary(s: dict) -> str:
    """The world's summary as a few lines (simulated or imported: absent parts are left out)."""
    q, imp, clicks, ctr = s["queries"], s["impressions"], s["clicks"], s["ctr"]
    rnd = "random" in imp
    lines = [
        f"items {s['items']:,} ({s['categories']} categories), users {s['users']:,}",
        f"queries: train {q['train']:,}, test {q['test']:,}, random-exposure {q['random']:,}, "
        f"retrieval {q['retrieval']:,}",
        f"impressions: train {imp['train']:,}, test {imp['test']:,}"
        + (f", random {imp['random']:,}" if rnd else ", no random-exposure log"),
        f"clicks: train {clicks['train']:,} (CTR {ctr['train']:.3f}), test {clicks['test']:,} "
        f"(CTR {ctr['test']:.3f})"
        + (f", random {clicks['random']:,} (CTR {ctr['random']:.3f})" if rnd else ""),
        f"never shown in training logs: {s['never_shown_share_train']:.1%} of items"
        + (
            f" (random-exposure set: {s['random_exposure_never_shown_share']:.1%})"
            if "random_exposure_never_shown_share" in s
            else ""
        ),
        f"head/tail: {s.get('head_items', '?')} head items take "
        f"{s.get('head_share_of_train_impressions', float('nan')):.1%} of training impressions, "
        f"{s.get('tail_items', '?')} tail items",
    ]
    if "appeal_strength" in s:
        lines.append(
            f"visual exposure bias: appeal strength {s.get('appeal_strength', 0.0):g}, style "
            f"correlation {s.get('style_correlation', 0.0):g}; corr(appeal, log popularity) "
            f"{s.get('appeal_popularity_correlation', float('nan')):+.2f}, head − tail mean "
            f"appeal {s.get('head_tail_appeal_gap', float('nan')):+.2f}"
        )
    if s.get("hidden_categories"):
        lines.append(
            f"never shown by the legacy system: categories {', '.join(s['hidden_categories'])} "
            f"({s.get('hidden_items_share', float('nan')):.1%} of items)"
        )
    if "bid_median" in s:
        lines.append(
            f"bids (cost per click): median {s['bid_median']:.3g}, corr(log bid, log "
            f"popularity) {s.get('bid_log_popularity_correlation', float('nan')):+.2f}"
        )
    return "\n".join(lines)
