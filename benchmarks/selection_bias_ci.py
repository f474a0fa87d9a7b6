"""How many retrieval queries the selection-bias gap Δ needs for a CI half-width ≤ 0.02.

Synthetic per-query hits (the committed runs keep no per-query hits): head/tail HR@10 as
measured on `small` (S1 0.405 / 0.321, S2 0.429 / 0.321; research/selection-bias.md),
the encoder's and S1's hits on one query agreeing with correlation ``rho`` (a shared
uniform draw with probability rho). Designs: uniform targets (head share of queries 0.20,
the catalog's head share, and 0.15), and a head/tail-stratified set (half head targets).
Also times the exact FAISS search of n queries over 6,000 64-d items, the retrieval part
of the cost (the photos and their embedding per encoder are the rest).

    PYTHONPATH=src python benchmarks/selection_bias_ci.py
"""

from __future__ import annotations

import time

import numpy as np

from visctr.eval.bias import selection_bias_gap
from visctr.eval.retrieval import search

HR = {"s1": (0.405, 0.321), "enc": (0.429, 0.321)}


def hits(n: int, head_share: float, rho: float, rng: np.random.Generator):
    head = np.zeros(n, bool)
    head[: int(round(head_share * n))] = True
    u = rng.random(n)
    u_ref = np.where(rng.random(n) < rho, u, rng.random(n))
    p_enc = np.where(head, *HR["enc"])
    p_ref = np.where(head, *HR["s1"])
    return u < p_enc, u_ref < p_ref, head


def half_width(n, head_share, rho, reps=3, n_boot=1000) -> float:
    out = []
    for rep in range(reps):
        e, s, head = hits(n, head_share, rho, np.random.default_rng(rep))
        lo, hi = selection_bias_gap(e, s, head, n_boot=n_boot, seed=rep)["ci95"]
        out.append((hi - lo) / 2)
    return float(np.mean(out))


def main() -> None:
    ns = (2_000, 5_000, 10_000, 20_000, 40_000)
    designs = (("uniform, 20% head", 0.20), ("uniform, 15% head", 0.15), ("stratified 50/50", 0.5))
    for rho in (0.0, 0.3):
        print(f"\nrho = {rho}: CI half-width of Δ (mean of 3 synthetic sets, 1,000 resamples)")
        print("| design | " + " | ".join(f"{n:,}" for n in ns) + " |")
        print("|---|" + "---|" * len(ns))
        for name, share in designs:
            row = [f"{half_width(n, share, rho):.4f}" for n in ns]
            print(f"| {name} | " + " | ".join(row) + " |")
    rng = np.random.default_rng(0)
    items = rng.normal(size=(6_000, 64)).astype(np.float32)
    print("\nexact search over 6,000 64-d items (top 50):")
    for n in ns:
        q = rng.normal(size=(n, 64)).astype(np.float32)
        t = time.perf_counter()
        search(q, items, 50)
        print(f"  {n:>6,} queries: {time.perf_counter() - t:.3f} s")
    e, s, head = hits(20_000, 0.2, 0.3, rng)
    t = time.perf_counter()
    selection_bias_gap(e, s, head, n_boot=2000)
    print(f"bootstrap, 20,000 queries, 2,000 resamples: {time.perf_counter() - t:.2f} s")


if __name__ == "__main__":
    main()
