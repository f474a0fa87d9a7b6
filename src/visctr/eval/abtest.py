"""Simulated online A/B test: each method's whole policy serves fresh traffic, and the
world's hidden click model scores what it shows (DESIGN §4, the paper's headline metric).

- **Traffic**: new queries from the world's users, later than the test split, photographed
  through the same camera model, drawn from a random stream of their own (never in any log,
  never used for training or tuning).
- **Policies** show ``top_k`` items per query. ``legacy``: the world's logging policy
  (control). ``oracle``: the items with the highest true click probability (ceiling).
  A method: retrieve ``candidates`` items from the whole catalog by cosine similarity of
  its embeddings (FAISS, exact), re-rank them with its CTR model, show the top ``top_k``.
- **Ranking** (``rank_by``): ``ctr`` ranks by predicted click probability alone; ``ecpm``
  by eCPM = pCTR × the item's hidden cost-per-click bid, as ad systems do: a method by
  sigmoid(CTR logit) × bid over its retrieved candidates, the legacy policy by
  max(its score, 0) × bid over its own top ``candidates`` (its score is a similarity plus
  a log-popularity boost, not a probability, and can be negative: a negative score gets no
  revenue weight and such items go last, among themselves by score), the oracle by true
  click probability × bid (the revenue ceiling).
- **Revenue**: when the world has bids, RPM = 1000 × Σ E[click] × bid / impressions (the
  revenue per mille impressions, sampled beside it), whichever the ranking.
- **Figures**: expected clicks from the hidden click model (no sampling noise) per
  impression = CTR; sampled clicks beside it; lift vs a baseline policy with a paired
  bootstrap CI over queries; share of the oracle's CTR; exposure fairness (share of
  impressions on tail items, catalog coverage, Gini of impressions over items).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from visctr.world.simulate import (
    DAY,
    SimConfig,
    _legacy_top_k,
    appeal_multiplier,
    click_probability,
    legacy_hidden,
    legacy_scores,
    pixel_vectors,
    sample_targets,
    thumbnails,
)
from visctr.world.store import World

TRAFFIC_STREAM = 0xAB7E57  # a random stream apart from everything the simulator draws


class TrafficPhotos:
    """The traffic's query photos, taken on demand: ``photos[a:b]`` (or an index array)
    is the same uint8 ``[n, C, H, W]`` as photographing every target in one pass, but
    only the camera's random state at each chunk start is kept (one pass at
    construction), never the photos. Reads in order re-take each chunk about once
    (the last chunk is cached), so the traffic's size costs no memory for its photos."""

    def __init__(self, item_images, image_rows: np.ndarray, cfg: SimConfig, seed: int) -> None:
        from visctr.world.camera import photograph
        from visctr.world.simulate import image_chunk

        self.item_images, self.image_rows, self.cfg = item_images, image_rows, cfg
        self.chunk = image_chunk(item_images, cfg.chunk_size)
        self.shape = (len(image_rows), *item_images.shape[1:])
        self.dtype = np.dtype(np.uint8)
        g = torch.Generator().manual_seed(seed)
        self.states = []
        self._cache: tuple[int, np.ndarray] | None = None
        for s in range(0, len(image_rows), self.chunk):
            self.states.append(g.get_state())
            photograph(item_images[image_rows[s : s + self.chunk]], cfg.camera, g)

    def __len__(self) -> int:
        return self.shape[0]

    def _take(self, i: int) -> np.ndarray:
        from visctr.world.camera import photograph

        if self._cache is None or self._cache[0] != i:
            g = torch.Generator()
            g.set_state(self.states[i])
            rows = self.image_rows[i * self.chunk : (i + 1) * self.chunk]
            self._cache = i, photograph(self.item_images[rows], self.cfg.camera, g)
        return self._cache[1]

    def _range(self, start: int, stop: int) -> np.ndarray:
        out = np.empty((max(stop - start, 0), *self.shape[1:]), dtype=np.uint8)
        pos = start
        while pos < stop:
            i = pos // self.chunk
            block = self._take(i)
            lo = pos - i * self.chunk
            n = min(stop - pos, len(block) - lo)
            out[pos - start : pos - start + n] = block[lo : lo + n]
            pos += n
        return out

    def __getitem__(self, idx) -> np.ndarray:
        if isinstance(idx, slice):
            start, stop, step = idx.indices(len(self))
            if step == 1:
                return self._range(start, stop)
            idx = np.arange(start, stop, step)
        rows = np.asarray(idx, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"photo index out of range for {len(self)} photos")
        if rows.size and np.all(np.diff(rows) == 1):  # a contiguous run: one pass
            return self._range(int(rows[0]), int(rows[-1]) + 1)
        out = np.empty((rows.size, *self.shape[1:]), dtype=np.uint8)
        for k in np.argsort(rows, kind="stable"):  # in order: each chunk taken once
            out[k] = self._range(int(rows[k]), int(rows[k]) + 1)[0]
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)


@dataclass
class Traffic:
    """Fresh queries: ``targets`` are item rows (hidden), ``images`` the query photos
    (an array, or :class:`TrafficPhotos` taken on demand)."""

    users: np.ndarray  # int64 [Q] user ids (= affinity rows)
    targets: np.ndarray  # int64 [Q] item rows
    timestamps: np.ndarray  # int64 [Q], after the world's last logged day
    images: np.ndarray | TrafficPhotos  # uint8 [Q, C, H, W]

    def __len__(self) -> int:
        return int(self.users.size)


def world_config(world: World) -> SimConfig:
    from visctr.config import from_dict

    return from_dict(SimConfig, world.meta["config"], "world.json config")


def simulate_traffic(world: World, n_queries: int, seed: int) -> Traffic:
    """``n_queries`` new queries of the world's users (targets ∝ popularity × preference)."""
    cfg = world_config(world)
    if "popularity" not in world.items:
        raise ValueError(f"{world.root}: the A/B test needs a simulated world (hidden popularity)")
    rng = np.random.default_rng([int(seed), TRAFFIC_STREAM])
    n_users = world.users_affinity.shape[0]
    users = rng.integers(0, n_users, size=n_queries).astype(np.int64)
    cats = np.asarray(world.items["category"], dtype=np.int64)
    targets = sample_targets(
        users, world.users_affinity, cats, np.asarray(world.items["popularity"]), rng
    ).astype(np.int64)
    ts = np.sort(cfg.days * DAY + rng.integers(0, DAY, size=n_queries)).astype(np.int64)
    image_rows = np.asarray(world.items["image_row"], dtype=np.int64)
    photo_seed = int(rng.integers(0, 2**31 - 1))
    # taken on demand a chunk at a time from the store: never held whole
    images = TrafficPhotos(world.item_images, image_rows[targets], cfg, photo_seed)
    return Traffic(users, targets, ts, images)


class ClickModel:
    """The world's hidden click model for one batch of traffic."""

    def __init__(self, world: World, traffic: Traffic) -> None:
        self.cfg = world_config(world)
        self.traffic = traffic
        rows = np.asarray(world.items["image_row"])
        self.pix = pixel_vectors(world.item_images, rows)  # read in chunks
        self.categories = np.asarray(world.items["category"], dtype=np.int64)
        appeal = np.asarray(world.items.get("appeal", np.zeros(len(rows))), dtype=np.float64)
        self.appeal = appeal_multiplier(appeal, self.cfg.appeal_strength)
        self.user_aff = world.users_affinity[traffic.users]
        self.bid = item_bids(world)

    def probability(self, shown: np.ndarray, q: slice | None = None) -> np.ndarray:
        """P(click) of ``shown`` item rows ``[q, K]`` at positions 0..K-1."""
        q = q or slice(0, len(self.traffic))
        targets = self.traffic.targets[q]
        like = torch.einsum(
            "qkd,qd->qk", self.pix[torch.from_numpy(shown)], self.pix[torch.from_numpy(targets)]
        ).numpy()
        pos = np.broadcast_to(np.arange(shown.shape[1]), shown.shape)
        return click_probability(
            shown,
            pos,
            targets,
            self.user_aff[q],
            self.categories,
            like,
            self.cfg.clicks,
            self.appeal,
        )

    def best(self, k: int, bid: np.ndarray | None = None) -> np.ndarray:
        """The oracle's top ``k`` item rows per query: highest P(click) at the top slot
        (times the item's ``bid`` when given: the eCPM ranking's revenue ceiling).

        Position bias is the same decreasing factor for every item, so showing items in
        order of their top-slot probability (× bid) maximises expected clicks (revenue)."""
        n = len(self.categories)
        chunk = max(8, 2**21 // n)  # [chunk, n] float64 blocks of at most 16 MB
        out = np.empty((len(self.traffic), k), dtype=np.int64)
        everything = np.arange(n)
        for s in range(0, len(self.traffic), chunk):
            q = slice(s, min(s + chunk, len(self.traffic)))
            m = q.stop - q.start
            shown = np.broadcast_to(everything, (m, n))
            like = (self.pix[torch.from_numpy(self.traffic.targets[q])] @ self.pix.T).numpy()
            p = click_probability(
                shown,
                np.zeros((m, n)),
                self.traffic.targets[q],
                self.user_aff[q],
                self.categories,
                like,
                self.cfg.clicks,
                self.appeal,
            )
            if bid is not None:
                p = p * bid[None, :]
            top = np.argpartition(-p, k - 1, axis=1)[:, :k]
            order = np.argsort(-np.take_along_axis(p, top, 1), axis=1, kind="stable")
            out[q] = np.take_along_axis(top, order, 1)
        return out


def item_bids(world: World) -> np.ndarray | None:
    """The items' cost-per-click bids in item-row order, or None when the world has none."""
    if "bid" not in world.items:
        return None
    return np.asarray(world.items["bid"], dtype=np.float64)


def legacy_policy(
    world: World,
    traffic: Traffic,
    k: int,
    bid: np.ndarray | None = None,
    candidates: int = 50,
) -> np.ndarray:
    """The world's logging policy (thumbnail similarity + popularity boost), top ``k``.

    With ``bid`` (eCPM ranking): its top ``candidates`` by score, re-ranked by
    ``max(score, 0) × bid`` (see the module docstring), ties by score."""
    cfg = world_config(world)
    cfg.logging.top_k = k
    rows = np.asarray(world.items["image_row"])
    thumbs = thumbnails(world.item_images, cfg.logging.thumbnail, rows)
    pop = np.asarray(world.items["popularity"], dtype=np.float64)
    log_pop = torch.from_numpy(np.log(pop / pop.max())).float()
    hidden = legacy_hidden(world)  # the categories it never shows, as when it wrote the log
    if bid is None:
        return _legacy_top_k(traffic.images, thumbs, log_pop, cfg, hidden)
    mask = torch.from_numpy(hidden) if hidden is not None else None
    n = min(max(candidates, k), thumbs.shape[0])
    out = np.empty((len(traffic), k), dtype=np.int64)
    chunk = max(64, min(cfg.chunk_size, 2**24 // thumbs.shape[0]))
    for s in range(0, len(traffic), chunk):
        q = thumbnails(traffic.images[s : s + chunk], cfg.logging.thumbnail)
        val, idx = legacy_scores(q, thumbs, log_pop, cfg, mask).topk(n, dim=1)
        val, idx = val.double().numpy(), idx.numpy()
        out[s : s + len(q)] = np.take_along_axis(idx, legacy_ecpm_order(val, bid[idx])[:, :k], 1)
    return out


def legacy_ecpm_order(score: np.ndarray, bid: np.ndarray) -> np.ndarray:
    """Per row, the order of ``score`` ``[Q, N]`` by ``max(score, 0) × bid`` descending,
    ties (every negative score among them) by score descending."""
    ecpm = np.maximum(score, 0.0) * bid
    return np.lexsort((-score, -ecpm), axis=1)


def ecpm_scorer(
    score: Callable[[np.ndarray], np.ndarray], bid: np.ndarray
) -> Callable[[np.ndarray], np.ndarray]:
    """``score`` (candidate item rows -> CTR logits) turned into eCPM = sigmoid(logit) ×
    bid, the ranking key of ``rank_by: ecpm``."""

    def ecpm(cand: np.ndarray) -> np.ndarray:
        logits = np.asarray(score(cand), dtype=np.float64)
        return 1.0 / (1.0 + np.exp(-logits)) * bid[cand]

    return ecpm


def retrieve_and_rerank(
    query_vectors: np.ndarray,
    item_vectors: np.ndarray,
    n_candidates: int,
    k: int,
    score: Callable[[np.ndarray], np.ndarray] | None,
) -> np.ndarray:
    """Top ``n_candidates`` items by cosine (exact FAISS), re-ranked by ``score`` (item rows
    ``[Q, N]`` -> scores ``[Q, N]``, e.g. CTR logits) when given; the top ``k`` rows."""
    from visctr.eval.retrieval import search

    _, cand = search(query_vectors, item_vectors, max(n_candidates, k))
    if score is None:
        return cand[:, :k]
    s = score(cand)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(cand, order, 1)


@dataclass
class PolicyFigures:
    """What one policy showed and what the click model says of it."""

    expected: np.ndarray  # float64 [Q] expected clicks per query
    sampled: np.ndarray  # int64 [Q] sampled clicks per query
    shown: np.ndarray  # int64 [Q, K] item rows
    revenue: np.ndarray | None = None  # float64 [Q] expected Σ click × bid per query
    revenue_sampled: np.ndarray | None = None  # float64 [Q] sampled Σ click × bid

    @property
    def ctr(self) -> float:
        return float(self.expected.sum() / self.shown.size)

    @property
    def ctr_sampled(self) -> float:
        return float(self.sampled.sum() / self.shown.size)

    @property
    def rpm(self) -> float | None:
        """Revenue per mille impressions, 1000 × Σ E[click] × bid / impressions."""
        return None if self.revenue is None else float(1000 * self.revenue.sum() / self.shown.size)

    @property
    def rpm_sampled(self) -> float | None:
        if self.revenue_sampled is None:
            return None
        return float(1000 * self.revenue_sampled.sum() / self.shown.size)


def score_policy(clicks: ClickModel, shown: np.ndarray, seed: int) -> PolicyFigures:
    """Expected and sampled clicks of ``shown`` (and revenue, when the world has bids)."""
    p = clicks.probability(shown)
    rng = np.random.default_rng([int(seed), TRAFFIC_STREAM, 1])
    clicked = rng.random(p.shape) < p
    bid = getattr(clicks, "bid", None)
    if bid is None:
        return PolicyFigures(p.sum(1), clicked.sum(1), shown)
    b = bid[shown]
    return PolicyFigures(p.sum(1), clicked.sum(1), shown, (p * b).sum(1), (clicked * b).sum(1))


def paired_lift(
    a: np.ndarray, b: np.ndarray, seed: int, n_boot: int = 1000, level: float = 0.95
) -> dict[str, float]:
    """Relative lift ``sum(a)/sum(b) − 1`` of per-query clicks, with a paired bootstrap CI
    over queries (both policies served the same queries)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    lift = float(a.sum() / b.sum() - 1) if b.sum() > 0 else float("nan")
    rng = np.random.default_rng([int(seed), TRAFFIC_STREAM, 2])
    n = len(a)
    lifts = np.empty(n_boot)
    for i in range(0, n_boot, 100):  # 100 resamples at a time: [100, Q] weights
        w = rng.multinomial(n, np.full(n, 1.0 / n), size=min(100, n_boot - i)).astype(np.float64)
        lifts[i : i + len(w)] = (w @ a) / np.maximum(w @ b, 1e-300) - 1
    lo, hi = np.quantile(lifts, [(1 - level) / 2, 1 - (1 - level) / 2])
    return {"lift": lift, "ci_low": float(lo), "ci_high": float(hi)}


def gini(counts: np.ndarray) -> float:
    """Gini coefficient of non-negative counts (0 = equal exposure, → 1 = one item)."""
    x = np.sort(np.asarray(counts, dtype=np.float64))
    n, total = x.size, x.sum()
    if n == 0 or total == 0:
        return 0.0
    return float((2 * np.arange(1, n + 1) - n - 1) @ x / (n * total))


def exposure(shown: np.ndarray, is_head: np.ndarray) -> dict[str, float]:
    counts = np.bincount(shown.ravel(), minlength=is_head.size)
    return {
        "tail_exposure_share": float((~is_head[shown]).mean()),
        "coverage": float((counts > 0).mean()),
        "gini": gini(counts),
    }


def summarise(
    figures: dict[str, PolicyFigures], is_head: np.ndarray, baselines: tuple[str, ...], seed: int
) -> dict[str, dict[str, float]]:
    """Per policy: ``ctr``, ``ctr_sampled``, ``oracle_share``, ``lift_vs_<b>`` (+ CI) for
    each baseline present, and the exposure figures; with revenue (a world with bids) also
    ``rpm``, ``rpm_sampled``, ``rpm_oracle_share`` and ``rpm_lift_vs_<b>`` (+ CI)."""
    oracle = figures.get("oracle")
    out: dict[str, dict[str, float]] = {}
    for name, f in figures.items():
        row = {"ctr": f.ctr, "ctr_sampled": f.ctr_sampled, **exposure(f.shown, is_head)}
        if oracle is not None:
            row["oracle_share"] = f.ctr / oracle.ctr if oracle.ctr > 0 else float("nan")
        for b in baselines:
            if b in figures and b != name:
                lift = paired_lift(f.expected, figures[b].expected, seed)
                row[f"lift_vs_{b}"] = lift["lift"]
                row[f"lift_vs_{b}_ci_low"] = lift["ci_low"]
                row[f"lift_vs_{b}_ci_high"] = lift["ci_high"]
        if f.revenue is not None:
            row["rpm"], row["rpm_sampled"] = f.rpm, f.rpm_sampled
            if oracle is not None and oracle.revenue is not None:
                row["rpm_oracle_share"] = f.rpm / oracle.rpm if oracle.rpm > 0 else float("nan")
            for b in baselines:
                if b in figures and b != name and figures[b].revenue is not None:
                    lift = paired_lift(f.revenue, figures[b].revenue, seed)
                    row[f"rpm_lift_vs_{b}"] = lift["lift"]
                    row[f"rpm_lift_vs_{b}_ci_low"] = lift["ci_low"]
                    row[f"rpm_lift_vs_{b}_ci_high"] = lift["ci_high"]
        out[name] = row
    return out


def embed_traffic(encoder_path, traffic: Traffic, batch_size: int = 1024) -> np.ndarray:
    """L2-normalised query vectors of the traffic photos through one encoder (as ``embed``)."""
    from visctr.encoders.checkpoint import load_encoder
    from visctr.encoders.export import embed_images

    enc = load_encoder(encoder_path)
    rows = np.arange(len(traffic))
    dev = torch.device("cpu")
    return np.concatenate(list(embed_images(enc, traffic.images, rows, batch_size, dev)))


def ctr_scorer(
    model_dir, world: World, embeddings_dir, traffic: Traffic, query_vectors: np.ndarray
) -> Callable[[np.ndarray], np.ndarray]:
    """``score(candidates [Q, N] item rows) -> logits [Q, N]`` of a trained CTR model for the
    traffic's (user, query photo, time) with each candidate at the top slot."""
    from visctr.ctr.batch import Batch, BatchPacker
    from visctr.ctr.training import load_model
    from visctr.ctr.visual import Embeddings
    from visctr.ids import IdIndex

    net, trained = load_model(model_dir, world, embeddings_dir)
    q = len(traffic)
    emb = trained.emb
    fresh = Embeddings(
        emb.item_vectors,
        emb.item_has_vector,
        IdIndex(np.arange(q, dtype=np.int64)),
        np.ascontiguousarray(query_vectors, dtype=np.float32),
        emb.items_path,
        emb.queries_path,
    )
    packer = BatchPacker(trained.fmap, fresh, fixed_position=0)
    net.set_visual_tables(emb.item_vectors, fresh.query_vectors)
    item_ids = np.asarray(world.items["item_id"], dtype=np.int64)

    def score(cand: np.ndarray) -> np.ndarray:
        n = cand.shape[1]
        cols = {
            "item_id": item_ids[cand.ravel()],
            "query_id": np.repeat(np.arange(q, dtype=np.int64), n),
            "user_id": np.repeat(traffic.users, n),
            "timestamp": np.repeat(traffic.timestamps, n),
            "position": np.zeros(cand.size, dtype=np.int64),
            "clicked": np.zeros(cand.size, dtype=np.int8),
        }
        packed = packer.pack(cols, world.root / "A/B traffic")
        out = np.empty(cand.size, dtype=np.float32)
        with torch.inference_mode():
            for s in range(0, cand.size, 65_536):
                part = packed.packed[s : s + 65_536], packed.labels[s : s + 65_536]
                out[s : s + 65_536] = net(Batch.from_numpy(*part)).numpy()
        return out.reshape(cand.shape)

    return score
