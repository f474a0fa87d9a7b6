"""S1 (SimSiam) training throughput: visctr vs lightly, and vs a bare forward+backward.

Images/s count both views and include augmentation and data loading. All three run in
this one process on the same backbone (visctr's Encoder), batch size, image size and
torch thread count, in interleaved rounds (median reported), so machine noise hits
all of them alike.

- visctr: the real training path, ``S1Method`` under a Lightning Trainer, batched tensor
  augmentations, whole-batch loading.
- lightly: ``SimSiamTransform`` on PIL images through a torch DataLoader (with 0 and with
  ``--workers`` worker processes), ``SimSiamProjectionHead`` + ``SimSiamPredictionHead``,
  ``NegativeCosineSimilarity``, a plain PyTorch loop.
- bare: encoder forward+backward+SGD step on a fixed float batch of 2B images.

visctr and bare run in fp32 and under bf16 autocast (``bf16-mixed``), the rows
``visctr bf16`` / ``bare bf16``, and in fp32 with the encoder in NCHW (``contiguous_format``)
instead of its default ``channels_last``, the rows ``visctr NCHW`` / ``bare NCHW``. lightly
runs at its default (fp32) on the same (``channels_last``) encoder. The CPU's native
bf16 support is printed: without AVX512-BF16/AMX, bf16 is emulated and slower.

    .venv/bin/python benchmarks/s1_throughput.py [--batch-size 256] [--threads 2]
        [--device cpu|cuda]

``--device cuda`` runs every contender on the GPU (``scripts/gpu_check.sh``); timings
wait for the GPU (``torch.cuda.synchronize``) before each clock read.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch


def catalog_images(n: int, size: int) -> np.ndarray:
    from visctr.data.catalog import CatalogConfig, load_catalog
    from visctr.errors import InputError

    try:
        return load_catalog(CatalogConfig(image_size=size, max_items=n)).images
    except InputError:
        rng = np.random.default_rng(0)
        return rng.integers(0, 256, (n, 1, size, size), dtype=np.uint8)


def sync(args) -> None:
    """Wait for queued GPU work before a clock read (nothing on a CPU)."""
    if args.device == "cuda":
        torch.cuda.synchronize()


def make_encoder(args, nchw: bool = False):
    from visctr.encoders import EncoderConfig, build_encoder

    torch.manual_seed(0)
    enc = build_encoder(EncoderConfig(backbone=args.backbone), 1, args.image_size)
    return enc.set_memory_format(torch.contiguous_format) if nchw else enc


def run_visctr(images: np.ndarray, args, precision: str = "32-true", nchw: bool = False) -> float:
    import lightning as L

    from visctr.encoders.config import S1Config
    from visctr.encoders.data import CatalogImages, make_loader
    from visctr.encoders.methods import S1Method

    class Timer(L.Callback):
        t0 = t1 = 0.0

        def on_train_batch_start(self, trainer, *a):
            if trainer.global_step == args.warmup:
                sync(args)
                self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, *a):
            sync(args)
            self.t1 = time.perf_counter()

    n = len(images)
    ds = CatalogImages(images, np.arange(n), np.arange(n), np.zeros(n))
    cfg = S1Config(batch_size=args.batch_size, lr=1e-3)
    loader = make_loader(ds, args.batch_size, 0)
    method = S1Method(make_encoder(args, nchw), cfg, 0)
    timer = Timer()
    trainer = L.Trainer(
        accelerator=args.device,
        devices=1,
        max_steps=args.warmup + args.steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
        deterministic=True,
        precision=precision,
    )
    torch.utils.deterministic.fill_uninitialized_memory = False
    trainer.fit(method, loader)
    return 2 * args.batch_size * args.steps / (timer.t1 - timer.t0)


def run_lightly(images: np.ndarray, args, workers: int) -> float:
    from lightly.loss import NegativeCosineSimilarity
    from lightly.models.modules import SimSiamPredictionHead, SimSiamProjectionHead
    from lightly.transforms import SimSiamTransform
    from PIL import Image
    from torch import nn

    pil = [Image.fromarray(img[0]) for img in images]
    transform = SimSiamTransform(
        input_size=args.image_size, normalize={"mean": [0.5], "std": [0.25]}
    )

    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return len(pil)

        def __getitem__(self, i):
            return transform(pil[i])

    encoder = make_encoder(args)
    d = encoder.embed_dim
    model = nn.ModuleDict(
        {
            "encoder": encoder,
            "projection": SimSiamProjectionHead(d, 256, 256),
            "prediction": SimSiamPredictionHead(256, 64, 256),
        }
    ).to(args.device)
    crit = NegativeCosineSimilarity()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(
        DS(),
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
    )

    def loop():
        while True:
            yield from loader

    it = loop()
    t0 = 0.0
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            sync(args)
            t0 = time.perf_counter()
        x0, x1 = (x.to(args.device, non_blocking=True) for x in next(it))
        z = model["projection"](model["encoder"](torch.cat([x0, x1])))
        p = model["prediction"](z)
        b = len(x0)
        loss = 0.5 * (crit(p[:b], z[b:].detach()) + crit(p[b:], z[:b].detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    sync(args)
    return 2 * args.batch_size * args.steps / (time.perf_counter() - t0)


def run_bare(args, bf16: bool = False, nchw: bool = False) -> float:
    encoder = make_encoder(args, nchw).to(args.device)
    opt = torch.optim.SGD(encoder.parameters(), lr=1e-3)
    x = torch.rand(2 * args.batch_size, 1, args.image_size, args.image_size, device=args.device)
    t0 = 0.0
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            sync(args)
            t0 = time.perf_counter()
        with torch.autocast(args.device, dtype=torch.bfloat16, enabled=bf16):
            loss = encoder(x).float().square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    sync(args)
    return 2 * args.batch_size * args.steps / (time.perf_counter() - t0)


def device_name(args) -> str:
    if args.device == "cuda":
        return f"CUDA: {torch.cuda.get_device_name()}"
    return "the CPU"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="convnet")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--image-size", type=int, default=28)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2, help="lightly DataLoader workers")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--items", type=int, default=6000)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no CUDA GPU here")
    torch.set_num_threads(args.threads)
    images = catalog_images(args.items, args.image_size)
    from visctr.precision import cpu_supports_bf16

    runs = {
        "visctr": lambda: run_visctr(images, args),
        "visctr bf16": lambda: run_visctr(images, args, "bf16-mixed"),
        "visctr NCHW": lambda: run_visctr(images, args, nchw=True),
        "lightly (0 workers)": lambda: run_lightly(images, args, 0),
        f"lightly ({args.workers} workers)": lambda: run_lightly(images, args, args.workers),
        "bare fwd+bwd": lambda: run_bare(args),
        "bare bf16": lambda: run_bare(args, bf16=True),
        "bare NCHW": lambda: run_bare(args, nchw=True),
    }
    res: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(args.rounds):
        for name, fn in runs.items():
            res[name].append(fn())
            torch.set_num_threads(args.threads)  # Lightning or workers must not change it
        print(
            f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in res.items()), flush=True
        )
    med = {k: statistics.median(v) for k, v in res.items()}
    print(
        f"\nS1 SimSiam training throughput, {args.backbone} {args.image_size}px, batch "
        f"{args.batch_size} (x2 views), {args.threads} threads, median of {args.rounds} rounds, "
        f"on {device_name(args)}"
    )
    for k, v in med.items():
        print(f"  {k:22s} {v:8.0f} img/s")
    best_lightly = max(v for k, v in med.items() if k.startswith("lightly"))
    print(f"  visctr / best lightly   {med['visctr'] / best_lightly:8.2f}x")
    print(f"  visctr / bare fwd+bwd   {med['visctr'] / med['bare fwd+bwd']:8.2f}")
    print(f"  visctr bf16 / bare bf16 {med['visctr bf16'] / med['bare bf16']:8.2f}")
    print(f"  visctr bf16 / fp32      {med['visctr bf16'] / med['visctr']:8.2f}x")
    print(f"  visctr / visctr NCHW    {med['visctr'] / med['visctr NCHW']:8.2f}x")
    print(f"  bare / bare NCHW        {med['bare fwd+bwd'] / med['bare NCHW']:8.2f}x")
    if args.device == "cpu":
        print(
            f"  native CPU bf16 (AVX512-BF16/AMX): {'yes' if cpu_supports_bf16() else 'no'}"
            " (precision: auto trains in fp32 on any CPU; VISCTR_CPU_BF16=1 opts into bf16)"
        )


if __name__ == "__main__":
    main()
