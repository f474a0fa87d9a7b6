"""``embed`` throughput (items + query photos to Parquet) vs a bare forward pass.

Bare: the same encoder's ``encode`` over the same number of images already in memory as
uint8 batches, in ``inference_mode``; ``bare NCHW`` is that with the encoder in
``contiguous_format`` instead of its default ``channels_last``. ``embed bf16`` /
``bare bf16`` are the two under bf16 autocast (``--precision bf16-mixed``; normalisation
in fp32, as ``embed`` does); ``--no-bf16`` leaves them out. The CPU's native bf16 support
is printed: without AVX512-BF16/AMX, bf16 is emulated and several times slower. They
alternate for ``--rounds`` rounds (median).

    .venv/bin/python benchmarks/embed_throughput.py --world DIR [--batch-size 1024] [--no-bf16]

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
    ap.add_argument("--no-bf16", action="store_true", help="leave out the bf16 rows")
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

    def bare(m=model, bf16: bool = False) -> float:
        t0 = time.perf_counter()
        with torch.inference_mode():
            for s in range(0, n, args.batch_size):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    z = m(images[s : s + args.batch_size])
                torch.nn.functional.normalize(z.float(), dim=1)  # as embed: fp32
        return n / (time.perf_counter() - t0)

    def ours(precision: str = "32") -> float:
        t0 = time.perf_counter()
        embed(tmp / "encoder.pt", world, tmp / "emb", batch_size=args.batch_size,
              precision=precision)  # fmt: skip
        return n / (time.perf_counter() - t0)

    runs = {"embed": ours, "bare forward": bare, "bare NCHW": lambda: bare(nchw)}
    if not args.no_bf16:
        runs |= {"embed bf16": lambda: ours("bf16-mixed"), "bare bf16": lambda: bare(bf16=True)}
    bare()  # warm-up
    if not args.no_bf16:
        bare(bf16=True)
    res: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(args.rounds):
        for k, run in runs.items():
            res[k].append(run())
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
    if not args.no_bf16:
        from visctr.precision import cpu_supports_bf16

        print(f"  embed bf16 / bare bf16  {med['embed bf16'] / med['bare bf16']:8.2f}")
        print(f"  embed bf16 / fp32       {med['embed bf16'] / med['embed']:8.2f}x")
        native = "yes" if cpu_supports_bf16() else "no"
        print(f"  native CPU bf16 (AVX512-BF16/AMX): {native} (embed is fp32 under precision: "
              "auto everywhere; these rows are --precision bf16-mixed)")  # fmt: skip


if __name__ == "__main__":
    main()
