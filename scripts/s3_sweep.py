"""Sweep S3 (debias) CTR variants on one seed directory of a ``visctr run``.

The README's "Tuning" table came from this script on a *dev* world, a run with another
world seed than the reported one (``visctr run --preset small --seed 100 --seeds 1 --out
runs/dev``), so the reported world's random-exposure set is never used to choose:

    python scripts/s3_sweep.py runs/dev 100 \\
        'plain={}' 'farthest={"debias": {"enabled": true}}' \\
        'hard={"debias": {"enabled": true, "negatives": "hard"}}'

Each ``tag=JSON`` is a set of ``CTRConfig`` overrides (``debias`` as a nested dict),
trained on the embeddings of S1+S2+D's encoder (with its S1 reference, paths from
``RunLayout`` and ``pipeline.methods``) for CTR seeds 0-2 (``--ctr-seeds``). The script prints the
random-exposure AUC, logged AUC and retrieval HR@10 of each (retrieval through the debias
network when it is on), then mean ± std per tag. ``--detach-debias`` is a diagnostic: the
CTR loss then does not train the debias network (only the triplet term does).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from visctr.ctr import CTRConfig, debias_transform, train_ctr
from visctr.ctr.config import DebiasConfig
from visctr.eval.ctr import evaluate_ctr
from visctr.eval.retrieval import evaluate_retrieval
from visctr.pipeline.layout import RunLayout
from visctr.pipeline.methods import METHODS
from visctr.train import TrainerConfig
from visctr.world import World

KEYS = ("auc_random_exposure", "auc", "hr@10", "longtail_hr@10")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a visctr run directory (holds world/)")
    ap.add_argument("seed", type=int, help="the training seed whose embeddings to use")
    ap.add_argument("variants", nargs="+", help="tag=JSON of CTRConfig overrides")
    ap.add_argument("--ctr-seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=Path("runs/s3_sweep"))
    ap.add_argument("--detach-debias", action="store_true")
    args = ap.parse_args()
    if args.detach_debias:
        from visctr.ctr.debias import DebiasHead

        DebiasHead.detach_debiased = True
    layout = RunLayout(args.run)
    world = World.load(layout.world)
    method = METHODS["S1+S2+D"]
    emb = layout.embeddings(args.seed, method.encoder)
    results: dict[str, list[dict]] = {}
    for item in args.variants:
        tag, _, spec = item.partition("=")
        over = json.loads(spec or "{}")
        debias = DebiasConfig(**over.pop("debias", {}))
        cfg = CTRConfig(**over, debias=debias, trainer=TrainerConfig(progress_bar=False))
        for seed in args.ctr_seeds:
            out = args.out / args.run.name / tag / str(seed)
            ref = layout.embeddings(args.seed, method.reference) if debias.enabled else None
            train_ctr(world, emb, out, cfg, seed, reference=ref)
            m = evaluate_ctr(out, world, emb)
            transform = debias_transform(out / "debias.pt") if debias.enabled else None
            m.update(evaluate_retrieval(world, emb, transform)[0])
            results.setdefault(tag, []).append(m)
            print(tag, seed, "  ".join(f"{k} {m[k]:.4f}" for k in KEYS), flush=True)
    print()
    for tag, ms in results.items():
        cols = [f"{k} {np.mean([m[k] for m in ms]):.4f}±{np.std([m[k] for m in ms]):.4f}"
                for k in KEYS]  # fmt: skip
        print(f"{tag:12s}", "  ".join(cols))


if __name__ == "__main__":
    main()
