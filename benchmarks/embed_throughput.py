"""``embed`` throughput (items + query photos to Parquet) vs a bare forward pass.

Bare: the same encoder's ``encode`` over the same number of images already in memory as
uint8 batches, in ``inference_mode``; ``bare NCHW`` is that with the encoder in
``contiguous_format`` instead of its default ``channels_last``. They alternate for
``--rounds`` rounds (median).

    .venv/bin/python benchmarks/embed_throughput.py --world DIR [--batch-size 1024]

Without ``--world`` the ``small`` preset is simulated into a temporary directory.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    from visctr.encoders import EncoderConfig, build_encoder, embed, load_encoder
    from visctr.encoders.checkpoint import encoder_spec, save_encoder
    from visctr.world import World

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", type=Path, default=None)
    ap.add_argument("--backbone", default="convnet")
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="visctr-embed-bench-"))
    if args.world is None:
        from visctr.world.presets import resolve_world_config
        from visctr.world.simulate import simulate

        args.world = tmp / "world"
        simulate(resolve_world_config("small"), 0, args.world)
    world = World.load(args.world)
    c, size = world.item_images.shape[1], world.item_images.shape[2]
    cfg = EncoderConfig(backbone=args.backbone)
    torch.manual_seed(0)
    enc = build_encoder(cfg, c, size)
    save_encoder(tmp / "encoder.pt", enc, encoder_spec(enc, cfg, c, size))
    n = len(world.items["item_id"]) + len(world.queries["query_id"])
    images = torch.from_numpy(
        np.concatenate([np.asarray(world.item_images), np.asarray(world.query_images)])
    )
    model = load_encoder(tmp / "encoder.pt")
    nchw = load_encoder(tmp / "encoder.pt").set_memory_format(torch.contiguous_format)

    def bare(m=model) -> float:
        t0 = time.perf_counter()
        with torch.inference_mode():
            for s in range(0, n, args.batch_size):
                m.encode(images[s : s + args.batch_size])
        return n / (time.perf_counter() - t0)

    def ours() -> float:
        t0 = time.perf_counter()
        embed(tmp / "encoder.pt", world, tmp / "emb", batch_size=args.batch_size)
        return n / (time.perf_counter() - t0)

    bare()  # warm-up
    res: dict[str, list[float]] = {"embed": [], "bare forward": [], "bare NCHW": []}
    for r in range(args.rounds):
        res["embed"].append(ours())
        res["bare forward"].append(bare())
        res["bare NCHW"].append(bare(nchw))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in res.items()))
    med = {k: statistics.median(v) for k, v in res.items()}
    print(
        f"\nembed throughput, {args.backbone}, {n} images ({size}px), batch {args.batch_size}, "
        f"{args.threads} threads, median of {args.rounds} rounds"
    )
    for k, v in med.items():
        print(f"  {k:14s} {v:8.0f} img/s")
    print(f"  embed / bare   {med['embed'] / med['bare forward']:8.2f}")
    print(f"  bare / NCHW    {med['bare forward'] / med['bare NCHW']:8.2f}x")


if __name__ == "__main__":
    main()
