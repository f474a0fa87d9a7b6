"""Training throughput of the visctr CTR model vs deepctr-torch DeepFM and a bare step.

All contenders train on the same synthetic features in one process, at the same batch
size and thread count:

- ``visctr``: ``CTRNet`` (fused embedding table, visual tables indexed by row, DCNv2
  cross ‖ MLP) — a plain PyTorch step over pre-encoded index batches, eager (the default);
- ``visctr+C``: the same step with the network through ``torch.compile``
  (``ctr.compile: true``; compile time is excluded and printed separately);
- ``visctr+L``: the same network through ``CTRModule`` in a Lightning ``Trainer``
  (what ``train_ctr`` runs, ``inner_steps`` optimiser steps per Lightning step), timed
  per epoch from the module's history;
- ``visctr+LC``: ``visctr+L`` with ``ctr.compile: true`` (its first, compiling epoch
  not counted);
- ``visctr+D``: with the S3 debias head + gate and the triplet term (raw step);
- ``visctr+DC``: ``visctr+D`` with ``ctr.compile: true``: the triplet draws and the row
  plan (``torch.unique``) run eagerly, the rest of the pass compiled whole;
- ``bare``: one fused embedding table + the same MLP over pre-gathered dense inputs of
  the same width: the floor any model of this shape pays;
- ``bare+D``: ``bare`` plus the S3 work on the same rows (debias MLP over each batch's
  queries, distinct items and triplet rows, the gate, the triplet loss), every index
  worked out beforehand: the floor of the S3 step. At the defaults S3 adds about 0.4x
  bare's matmul work (the head runs on ~2,000 rows a step: 1,024 queries and ~1,000
  distinct items, of which ~700 come only from the 3x256 triplet rows) and some
  60 small elementwise ops, so ``bare+D`` runs at about half of ``bare``;
- ``DeepFM``: ``deepctr_torch.models.DeepFM`` (same sparse fields and embedding size,
  the same dense columns, the same DNN) through its own ``fit`` loop.

Items are drawn with a Zipf(1.15) popularity by default (``--items skewed``): ~340
distinct items per 1,024 rows, as in the ``small`` world's training log (343; its
queries: 1,001 of 1,024), where the S3 head runs once per distinct item;
``--items uniform`` draws them uniformly (~940 distinct), the worst case for that.

The machine may be shared, so contenders run interleaved in short rounds and each keeps
its best round (the least disturbed); the ratios use those.

    python benchmarks/ctr_throughput.py [--batch 1024] [--threads 2] [--dim 64] [--rounds 5]
        [--items skewed|uniform] [--device cpu|cuda]

``--device cuda`` (``scripts/gpu_check.sh``) runs visctr's contenders, ``bare`` and
``bare+D`` on the GPU with their batches already there, Lightning on ``accelerator="gpu"``
and DeepFM on ``cuda:0``; every timing waits for the GPU before reading the clock.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import types

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from visctr.ctr.batch import Batch
from visctr.ctr.config import CTRConfig
from visctr.ctr.feature_map import FeatureMap, FieldSpec
from visctr.ctr.model import build_ctr_net, mlp
from visctr.ctr.trainer import CTRModule
from visctr.s3.config import DebiasConfig
from visctr.s3.mining import Triplets

VOCABS = [("user", 2001), ("hour", 24), ("day", 7), ("position", 51), ("category", 10),
          ("pop_bucket", 16)]  # fmt: skip
N_ITEMS, N_QUERIES, N_CAT = 6000, 50_000, 10


def feature_map(dim: int) -> FeatureMap:
    fields, off = [], 0
    for name, v in VOCABS:
        fields.append(FieldSpec(name, v, off))
        off += v
    return FeatureMap(fields, dim, N_CAT, 50, [1], 0, 1, 1, list(range(N_ITEMS)),
                      [i % N_CAT for i in range(N_ITEMS)], [0] * N_ITEMS,
                      list(range(VOCABS[0][1] - 1)))  # fmt: skip


def make_data(n: int, batch: int, dim: int, seed: int = 0, items: str = "skewed"):
    """Raw columns + packed index batches + visual tables + affinity, all synthetic."""
    rng = np.random.default_rng(seed)
    fmap = feature_map(dim)
    raw = {name: rng.integers(0, v, n) for name, v in VOCABS}
    raw["user_row"] = raw["user"]
    if items == "skewed":  # logged impressions repeat popular items (see the docstring)
        pop = 1.0 / np.arange(1, N_ITEMS + 1) ** 1.15
        raw["item"] = rng.permutation(N_ITEMS)[rng.choice(N_ITEMS, n, p=pop / pop.sum())]
    else:
        raw["item"] = rng.integers(0, N_ITEMS, n)
    raw["query"] = rng.integers(0, N_QUERIES, n)
    raw["category"] = raw["item"] % N_CAT
    y = (rng.random(n) < 0.1).astype(np.float32)
    items = rng.normal(size=(N_ITEMS, dim)).astype(np.float32)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    queries = rng.normal(size=(N_QUERIES, dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    aff = rng.dirichlet(np.ones(N_CAT), VOCABS[0][1]).astype(np.float32)
    offs = fmap.offsets()
    sparse = np.stack([raw[name] + offs[j] for j, (name, _) in enumerate(VOCABS)], axis=1)
    whole = Batch.from_columns(sparse, raw["user_row"], raw["item"], raw["query"],
                               raw["category"], y)  # fmt: skip
    batches = [Batch(whole.packed[s : s + batch], whole.labels[s : s + batch])
               for s in range(0, n - batch + 1, batch)]  # fmt: skip
    # dense columns as a plain pipeline would feed them (pre-gathered per impression)
    q, i = queries[raw["query"]], items[raw["item"]]
    dense = {
        "q": q * np.sqrt(dim), "i": i * np.sqrt(dim), "cos": (q * i).sum(1, keepdims=True),
        "aff_item": aff[raw["user_row"], raw["category"]][:, None], "aff": aff[raw["user_row"]],
    }  # fmt: skip
    return fmap, raw, y, batches, dense, items, queries, aff


DEVICE = torch.device("cpu")  # set once by main() from --device


def sync() -> None:
    """Wait for queued GPU work before a clock read (nothing on a CPU)."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def to_device(x):
    """A tensor, a Batch or a tuple/list of them on ``DEVICE``."""
    if isinstance(x, Batch):
        return Batch(x.packed.to(DEVICE), x.labels.to(DEVICE))
    if isinstance(x, torch.Tensor):
        return x.to(DEVICE)
    if isinstance(x, tuple | list):
        return type(x)(to_device(v) for v in x)
    return x


def timed_steps(step, batches, warmup: int = 3) -> float:
    for b in batches[:warmup]:
        step(b)
    sync()
    t0 = time.perf_counter()
    for b in batches:
        step(b)
    sync()
    return sum(len(b[-1]) for b in batches) / (time.perf_counter() - t0)


def visctr_contender(fmap, cfg, items, queries, aff, triplets=None, compile=False):
    net = build_ctr_net(cfg, fmap, aff, triplets)
    net.set_visual_tables(items, queries)
    net.to(DEVICE)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, fused=True)  # as CTRModule
    gen = torch.Generator().manual_seed(0)
    # as CTRModule: the row plan eagerly, the rest of the pass compiled with ctr.compile
    forward = torch.compile(net.forward_prepared, dynamic=True) if compile else net.forward_prepared

    def step(batch: Batch):  # as CTRModule.training_step
        logits, aux, _ = forward(batch, net.prepare(batch, gen))
        loss = F.binary_cross_entropy_with_logits(logits, batch.labels)
        if aux is not None:
            loss = loss + aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return net, step


def bare_contender(fmap, cfg, d_dense):
    emb = nn.Embedding(fmap.total_vocab, cfg.field_dim)
    deep = mlp([fmap.n_fields * cfg.field_dim + d_dense, *cfg.mlp])
    out = nn.Linear(cfg.mlp[-1], 1)
    for m in (emb, deep, out):
        m.to(DEVICE)
    params = [*emb.parameters(), *deep.parameters(), *out.parameters()]
    opt = torch.optim.Adam(params, lr=1e-3, fused=True)  # same optimiser as ours

    def step(b):
        x, d, y = b
        e = emb(x).flatten(1)
        z = out(deep(torch.cat([e, d], 1))).squeeze(1)
        loss = F.binary_cross_entropy_with_logits(z, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def bare_debias_contender(fmap, cfg, items, queries, aff, triplets, batches, dcfg):
    """The S3 step's floor: ``bare`` plus the same debias MLP, gate and triplet loss on the
    same rows (each batch's queries, distinct items and triplet rows), every index worked
    out beforehand; the step does only the matmuls and elementwise work S3 must do.

    Returns ``(step, batches)``: its batches carry the pre-gathered inputs."""
    from visctr.losses.triplet import triplet_loss
    from visctr.s3.net import DebiasHead
    from visctr.s3.terms import S3Debias

    dim = items.shape[1]
    d_sparse = fmap.n_fields * cfg.field_dim
    emb = nn.Embedding(fmap.total_vocab, cfg.field_dim)
    head = DebiasHead(dim, dcfg.debias.hidden)
    d_rest = 2 + N_CAT  # cos, aff[cat], aff
    deep = mlp([d_sparse + d_rest + 2 * dim, *cfg.mlp])
    out = nn.Linear(cfg.mlp[-1], 1)
    for m in (emb, head, deep, out):
        m.to(DEVICE)
    params = [*emb.parameters(), *head.parameters(), *deep.parameters(), *out.parameters()]
    opt = torch.optim.Adam(params, lr=1e-3, fused=True)
    gen = torch.Generator().manual_seed(0)
    iv_all, qv_all, aff_t = (torch.from_numpy(x) for x in (items, queries, aff))
    k = dcfg.debias.triplets_per_step
    prepared = []
    for b in batches:  # S3's own row plan, made before timing
        n_b = b.item_row.shape[0]
        plan = S3Debias.plan(n_b, b.item_row, torch.cat(triplets.sample(k, gen)))
        keep = plan.keep[n_b:] - n_b  # the batch's distinct items among plan.uniq
        aff_u = aff_t.index_select(0, b.user_row)
        rest = torch.cat([aff_u.gather(1, b.category.unsqueeze(1)), aff_u], 1)
        prepared.append((b.sparse, qv_all.index_select(0, b.query_row),
                         iv_all.index_select(0, plan.uniq[keep]),
                         iv_all.index_select(0, plan.uniq), keep, plan.item_at, plan.extra_at,
                         rest, b.labels))  # fmt: skip
    prepared = [to_device(p) for p in prepared]
    s = float(np.sqrt(dim))

    def step(p):
        x, q, iv_batch, iv_uniq, keep, at, trip_at, rest, y = p
        gq = F.normalize(head(q), dim=-1)
        d = head.net(iv_uniq)
        gi = F.normalize(head.fuse(iv_batch, d.index_select(0, keep)), dim=-1).index_select(0, at)
        feats = torch.cat([(gq * gi).sum(-1, keepdim=True), rest, gq * s, gi * s], 1)
        e = emb(x).flatten(1)
        z = out(deep(torch.cat([e, feats], 1))).squeeze(1)
        t = d.index_select(0, trip_at)
        trip = triplet_loss(t[:k], t[k : 2 * k], t[2 * k :], dcfg.debias.margin, unit=True)
        loss = F.binary_cross_entropy_with_logits(z, y) + dcfg.debias.weight * trip
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step, prepared


def deepfm_contender(cfg, raw, dense, y, batch):
    """DeepFM's ``fit`` as a function of rows, or ``None`` without deepctr-torch."""
    sys.modules.setdefault("requests", types.ModuleType("requests"))  # it phones home on import
    try:
        from deepctr_torch.inputs import DenseFeat, SparseFeat
        from deepctr_torch.models import DeepFM
    except ImportError:
        print("DeepFM: skipped (deepctr-torch is not installed: pip install deepctr-torch)")
        return None

    sparse = [SparseFeat(name, v, embedding_dim=cfg.field_dim) for name, v in VOCABS]
    dense_cols = [DenseFeat(k, v.shape[1]) for k, v in dense.items()]
    cols = sparse + dense_cols
    dev = "cuda:0" if DEVICE.type == "cuda" else "cpu"
    model = DeepFM(cols, cols, dnn_hidden_units=tuple(cfg.mlp), task="binary", device=dev)
    model.compile("adam", "binary_crossentropy")
    x = {name: raw[name] for name, _ in VOCABS} | dense

    def run(n_rows: int) -> float:
        sub = {k: v[:n_rows] for k, v in x.items()}
        t0 = time.perf_counter()
        model.fit(sub, y[:n_rows], batch_size=batch, epochs=1, verbose=0, shuffle=False)
        sync()
        return n_rows / (time.perf_counter() - t0)

    return run


def lightning_contender(fmap, cfg, items, queries, aff, batches):
    import lightning as L

    net = build_ctr_net(cfg, fmap, aff)
    net.set_visual_tables(items, queries)
    module = CTRModule(net, cfg, seed=0)
    trainer = L.Trainer(accelerator="gpu" if DEVICE.type == "cuda" else "cpu", devices=1, max_epochs=10_000, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0,
                        log_every_n_steps=10_000)  # fmt: skip

    def run() -> float:
        trainer.fit_loop.max_epochs = trainer.current_epoch + 1
        k = cfg.inner_steps  # as train_ctr: k optimiser steps per Lightning step
        groups = [batches[s : s + k] for s in range(0, len(batches), k)]
        trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(groups, batch_size=None))
        h = module.history[-1]
        return h["steps"] * len(batches[0][1]) / h["seconds"]

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dim", type=int, default=64, help="visual embedding width")
    ap.add_argument("--steps", type=int, default=40, help="steps per contender per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-lightning", action="store_true")
    ap.add_argument(
        "--items",
        choices=("skewed", "uniform"),
        default="skewed",
        help="item popularity of the synthetic log (see the module docstring)",
    )
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no CUDA GPU here")
    global DEVICE
    DEVICE = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    n = args.batch * (args.steps + 3)
    fmap, raw, y, batches, dense, items, queries, aff = make_data(
        n, args.batch, args.dim, items=args.items
    )
    cfg = CTRConfig(batch_size=args.batch)
    d_dense = sum(v.shape[1] for v in dense.values())
    dense_all = np.concatenate(list(dense.values()), axis=1).astype(np.float32)
    bare_batches = [(b.sparse, torch.from_numpy(dense_all[s : s + args.batch]), b.labels)
                    for b, s in zip(batches, range(0, n, args.batch), strict=False)]  # fmt: skip
    bare_batches = to_device(bare_batches)
    dev_batches = to_device(batches)  # visctr's raw steps read them there; Lightning moves its own
    net, ours = visctr_contender(fmap, cfg, items, queries, aff)
    assert net.d_in == fmap.n_fields * cfg.field_dim + d_dense, "bare must have the same shape"
    dcfg = CTRConfig(batch_size=args.batch, debias=DebiasConfig(enabled=True))
    rng = np.random.default_rng(1)
    trip = Triplets(np.arange(1200), rng.integers(1200, N_ITEMS, (1200, 10)),
                    rng.integers(1200, N_ITEMS, (1200, 50)))  # fmt: skip
    _, ours_d = visctr_contender(fmap, dcfg, items, queries, aff, trip)
    _, ours_dc = visctr_contender(fmap, dcfg, items, queries, aff, trip, compile=True)
    bare_d, bare_d_batches = bare_debias_contender(
        fmap, cfg, items, queries, aff, trip, batches, dcfg
    )
    bare = bare_contender(fmap, cfg, d_dense)
    deepfm = deepfm_contender(cfg, raw, dense, y, args.batch)
    _, ours_c = visctr_contender(fmap, cfg, items, queries, aff, compile=True)
    t0 = time.perf_counter()
    for b in dev_batches[:2]:
        ours_c(b)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for b in dev_batches[:3]:  # the first step compiles (dynamic shapes: one graph for all)
        ours_dc(b)
    compile_dc_s = time.perf_counter() - t0
    light = light_c = None
    if not args.no_lightning:
        light = lightning_contender(fmap, cfg, items, queries, aff, batches)
        ccfg = CTRConfig(batch_size=args.batch, compile=True)
        light_c = lightning_contender(fmap, ccfg, items, queries, aff, batches)
        light_c()  # compiles (first epoch not counted)
    names = ("visctr", "visctr+C", "visctr+L", "visctr+LC", "visctr+D", "visctr+DC", "bare",
             "bare+D", "DeepFM")  # fmt: skip
    rows: dict[str, list[float]] = {k: [] for k in names}
    if deepfm is not None:
        deepfm(args.batch * 4)  # warm-up
    for r in range(args.rounds):
        rows["visctr"].append(timed_steps(ours, dev_batches))
        rows["visctr+C"].append(timed_steps(ours_c, dev_batches))
        rows["bare"].append(timed_steps(bare, bare_batches))
        if deepfm is not None:
            rows["DeepFM"].append(deepfm(len(batches) * args.batch))
        rows["visctr+D"].append(timed_steps(ours_d, dev_batches))
        rows["visctr+DC"].append(timed_steps(ours_dc, dev_batches))
        rows["bare+D"].append(timed_steps(bare_d, bare_d_batches))
        if light is not None:
            rows["visctr+L"].append(light())
            rows["visctr+LC"].append(light_c())
        print(f"round {r + 1}: " + "  ".join(f"{k} {v[-1]:,.0f}" for k, v in rows.items() if v),
              flush=True)  # fmt: skip
    best = {k: max(v) for k, v in rows.items() if v}
    med = {k: statistics.median(v) for k, v in rows.items() if v}
    print(
        f"\nbatch {args.batch}, {args.threads} threads, visual dim {args.dim}, "
        f"{len(batches)} steps x {args.rounds} rounds, {args.items} items, on "
        f"{torch.cuda.get_device_name() if DEVICE.type == 'cuda' else 'the CPU'}; "
        "samples/s (best round | median)"
    )
    for k in best:
        print(f"  {k:9s} {best[k]:>10,.0f} | {med[k]:>10,.0f}")
    print(f"  (compile time: visctr+C first two steps {compile_s:.1f}s, "
          f"visctr+DC first three {compile_dc_s:.1f}s)")  # fmt: skip
    for k in ("visctr", "visctr+C"):
        if "DeepFM" in best:
            print(f"{k + ' / DeepFM':23s} = {best[k] / best['DeepFM']:.2f}x (target >= 2.5x)")
        print(f"{k + ' / bare':23s} = {best[k] / best['bare']:.0%} (target >= 85%)")
    for k in ("visctr+L", "visctr+LC"):
        if k in best:
            print(f"{k + ' / bare':23s} = {best[k] / best['bare']:.0%}")
            if "DeepFM" in best:
                print(f"{k + ' / DeepFM':23s} = {best[k] / best['DeepFM']:.2f}x")
    print(f"visctr+debias / bare    = {best['visctr+D'] / best['bare']:.0%} (target >= 70%)")
    print(f"visctr+DC / bare        = {best['visctr+DC'] / best['bare']:.0%} (compiled)")
    print(f"bare+D / bare           = {best['bare+D'] / best['bare']:.0%} (the S3 floor)")
    print(f"visctr+debias / bare+D  = {best['visctr+D'] / best['bare+D']:.0%}")


if __name__ == "__main__":
    main()
