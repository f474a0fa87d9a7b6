"""The encoder stages as functions: ``pretrain`` (S1), ``finetune`` (S2), ``classify``
(ResNet-C). Each trains with Lightning and writes to ``out_dir``:

- ``encoder.pt``: the encoder as a plain dict (:mod:`visctr.encoders.checkpoint`),
- ``history.json``: per epoch, the train loss (and its parts) and the online kNN accuracy,
- ``config.yaml``: the resolved stage config,
- ``stage.json``: the stage's record (:mod:`visctr.stagedir`): its key, and once done the
  outputs' digest and the summary figures,
- ``checkpoints/last.ckpt``: periodic Lightning checkpoint; a killed run resumes from it.

A stage done for the key :func:`stage_key` (config, seed, the world's content, the init
encoder's content) with its ``encoder.pt`` unchanged since returns at once.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch

from visctr.config import config_hash, dump_yaml, to_dict
from visctr.encoders.backbones import Encoder
from visctr.encoders.checkpoint import (
    build_encoder,
    encoder_from_file,
    encoder_spec,
    read_encoder_file,
    save_encoder,
)
from visctr.encoders.config import ClassifyConfig, EncoderConfig, S1Config, S2Config, StageConfig
from visctr.encoders.data import (
    CatalogImages,
    ClickPairs,
    NegativePool,
    exposed_rows,
    make_loader,
)
from visctr.encoders.methods import EncoderMethod, ResNetCMethod, S1Method, S2Method
from visctr.encoders.methods.base import EpochEnd
from visctr.encoders.objectives import objective_class
from visctr.encoders.probe import KnnProbe
from visctr.errors import ConfigError, InputError
from visctr.io import claim_out_dir, write_json, write_text
from visctr.precision import on_cuda
from visctr.stagedir import StageDir
from visctr.train import build_trainer, quiet_pytree, resume_checkpoint
from visctr.world.store import World


def _file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def _image_geometry(world: World) -> tuple[int, int]:
    shape = world.item_images.shape
    if len(shape) != 4:
        raise InputError(
            f"{world.root / 'images' / 'items.npy'}: expected [N, C, H, W], got shape {shape}"
        )
    return int(shape[1]), int(shape[2])


OUTPUTS = ("encoder.pt",)  # what the stage's digest covers (what later stages read)


def stage_key(
    stage: str,
    cfg: StageConfig,
    seed: int,
    world: World,
    init: Path | None = None,
    encoder: Encoder | None = None,
) -> str:
    """The stage's cache key: config (less how progress is shown and logged), seed, and the
    content of what it reads (the world, the init encoder), never paths or mtimes."""
    trainer = to_dict(cfg.trainer)
    trainer.pop("progress_bar", None)
    trainer.pop("logger", None)
    c = to_dict(cfg)
    c["trainer"] = trainer
    return config_hash(
        {
            "stage": stage,
            "cfg": c,
            "seed": int(seed),
            "world": world.digest(),
            "init": _file_digest(init) if init is not None else None,
            "custom": repr(encoder) if encoder is not None else None,
            "weights": _weights_digest(cfg.encoder.weights, cfg.encoder.backbone),
        }
    )


def _weights_digest(source: str | None, backbone: str) -> str | None:
    """The content of ``encoder.weights`` (a file edited in place is a new key)."""
    if source is None:
        return None
    from visctr.encoders.checkpoint import weights_path

    path = weights_path(source, backbone)
    if not path.is_file():
        raise InputError(f"{path}: encoder.weights file not found")
    return _file_digest(path)


def _cached(out_dir: Path, h: str) -> bool:
    return StageDir(out_dir, h, OUTPUTS).cached() is not None


def _make_encoder(cfg: EncoderConfig, world: World, encoder: Encoder | None) -> Encoder:
    if encoder is not None:
        return encoder
    c, size = _image_geometry(world)
    return build_encoder(cfg, c, size)


def _probe(catalog: CatalogImages, cfg: StageConfig, seed: int) -> KnnProbe | None:
    if cfg.probe_items <= 0:
        return None
    return KnnProbe.sample(
        catalog.images, catalog.rows, catalog.categories, cfg.probe_items, seed, cfg.probe_k
    )


def _cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    return obj


class LoaderPositions(L.Callback):
    """Keeps the train loaders' positions in the epoch in the checkpoints.

    Lightning restores a loader's ``state_dict`` only when it sets the loaders up after
    reading the checkpoint, but ``configure_optimizers`` sets them up earlier (to count
    the steps of the LR schedule), so a run resumed mid-epoch would start its epoch over.
    Callback state is read before that, so the positions reach the loaders in time.
    """

    def __init__(self, loaders: Any) -> None:
        from lightning.pytorch.utilities import CombinedLoader

        named = (
            dict(loaders.iterables) if isinstance(loaders, CombinedLoader) else {"train": loaders}
        )
        self.loaders = {k: v for k, v in named.items() if hasattr(v, "load_state_dict")}

    @property
    def state_key(self) -> str:
        return "LoaderPositions"

    def state_dict(self) -> dict[str, Any]:
        return {k: v.state_dict() for k, v in self.loaders.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, v in self.loaders.items():
            if k in state:
                v.load_state_dict(state[k])


def _fit(
    stage: str,
    method: EncoderMethod,
    loaders: Any,
    cfg: StageConfig,
    out_dir: Path,
    seed: int,
    h: str,
    spec: dict,
    callbacks: list[Any] | None,
) -> Path:
    """Train (resuming a matching checkpoint) and write the stage's artifacts."""
    claim_out_dir(out_dir, "encoder")
    record = StageDir(out_dir, h, OUTPUTS)
    record.start()  # checkpoints of another config are removed: only this one resumes
    resume = resume_checkpoint(out_dir)
    write_text(dump_yaml(cfg), out_dir / "config.yaml")
    trainer = build_trainer(
        cfg.trainer,
        out_dir,
        cfg.epochs,
        callbacks=[EpochEnd(), LoaderPositions(loaders), *(callbacks or [])],
        bf16_ok=True,
    )
    if resume is not None:
        print(f"[{stage}] resuming from {resume}", flush=True)
    t0 = time.perf_counter()
    trainer.fit(method, train_dataloaders=loaders, ckpt_path=resume, weights_only=True)
    seconds = time.perf_counter() - t0
    path = out_dir / "encoder.pt"
    if trainer.is_global_zero:
        last = method.history[-1] if method.history else {}
        meta = {"stage": stage, "seed": int(seed), "hash": h, "epochs": len(method.history)}
        save_encoder(path, method.encoder, spec, heads=_cpu(method.heads_state()), meta=meta)
        write_json(method.history, out_dir / "history.json")
        summary = {
            "stage": stage,
            "epochs": len(method.history),
            "final_loss": last.get("loss"),
            "knn_acc": last.get("knn_acc"),
        }
        record.finish(seconds, summary)
        acc = "n/a" if last.get("knn_acc") is None else f"{last['knn_acc']:.3f}"
        loss = "n/a" if last.get("loss") is None else f"{last['loss']:.4f}"
        print(
            f"[{stage}] {len(method.history)} epochs, final loss {loss}, kNN acc {acc}, "
            f"{seconds:.1f} s -> {path}",
            flush=True,
        )
    return path


def _seeded(seed: int, build):
    """Build modules from a private RNG stream (no global seeding)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _catalog_stage(
    stage: str,
    world: World,
    cfg: StageConfig,
    out_dir: Path,
    seed: int,
    encoder: Encoder | None,
    callbacks: list[Any] | None,
    make_method: Callable[[Encoder, CatalogImages], EncoderMethod],
) -> Path:
    """A stage trained on the catalog images alone (S1, ResNet-C): cache, build, fit."""
    out_dir = Path(out_dir)
    h = stage_key(stage, cfg, seed, world, encoder=encoder)
    if _cached(out_dir, h):
        print(f"[{stage}] up to date: {out_dir / 'encoder.pt'}", flush=True)
        return out_dir / "encoder.pt"
    catalog = CatalogImages.from_world(world)
    loader = make_loader(
        catalog, cfg.batch_size, seed, cfg.num_workers, pin_memory=on_cuda(cfg.trainer.accelerator)
    )
    c, size = _image_geometry(world)
    method = _seeded(seed, lambda: make_method(_make_encoder(cfg.encoder, world, encoder), catalog))
    spec = encoder_spec(method.encoder, None if encoder else cfg.encoder, c, size)
    return _fit(stage, method, loader, cfg, out_dir, seed, h, spec, callbacks)


def pretrain(
    world: World,
    cfg: S1Config,
    out_dir: Path,
    seed: int,
    *,
    encoder: Encoder | None = None,
    callbacks: list[Any] | None = None,
) -> Path:
    """S1: self-supervised pre-training on every catalog image.

    Args:
        world: the world whose catalog images it trains on (:meth:`visctr.World.load`).
        cfg: :class:`~visctr.encoders.config.S1Config` (the objective, augmentations,
            budget, ``trainer``); ``visctr run``'s is ``resolve_run_config(preset).s1``.
        out_dir: written with ``encoder.pt``, ``history.json`` and ``checkpoints/``; a
            finished stage of the same config, seed and world is reused, not retrained.
        seed: fixes the initialisation and every random draw.
        encoder: train this encoder instead of one built from ``cfg.encoder``.
        callbacks: extra Lightning callbacks.

    Returns:
        The path of ``encoder.pt``.

    Example:
        >>> world = visctr.World.load("worlds/shop")                          # doctest: +SKIP
        >>> s1 = visctr.pretrain(world, visctr.S1Config(), "out/s1", seed=0)  # doctest: +SKIP
    """
    objective_class(cfg.objective.method, "s1.objective.method")  # fails before any work
    return _catalog_stage(
        "s1", world, cfg, out_dir, seed, encoder, callbacks,
        lambda enc, catalog: S1Method(enc, cfg, seed, _probe(catalog, cfg, seed)),
    )  # fmt: skip


def classify(
    world: World,
    cfg: ClassifyConfig,
    out_dir: Path,
    seed: int,
    *,
    encoder: Encoder | None = None,
    callbacks: list[Any] | None = None,
) -> Path:
    """ResNet-C: cross-entropy on item categories, the category-supervised baseline.

    Args and Returns: as :func:`pretrain`, with a
    :class:`~visctr.encoders.config.ClassifyConfig`.

    Example:
        >>> rc = visctr.classify(world, visctr.ClassifyConfig(), "out/rc", seed=0)  # doctest: +SKIP
    """

    def make(enc: Encoder, catalog: CatalogImages) -> EncoderMethod:
        n_cat = max(world.n_categories, int(catalog.categories.max()) + 1)
        return ResNetCMethod(enc, cfg, seed, n_cat, _probe(catalog, cfg, seed))

    return _catalog_stage("resnet_c", world, cfg, out_dir, seed, encoder, callbacks, make)


def finetune(
    world: World,
    cfg: S2Config,
    out_dir: Path,
    seed: int,
    init: Path | None = None,
    *,
    encoder: Encoder | None = None,
    callbacks: list[Any] | None = None,
) -> Path:
    """S2: click-contrastive fine-tuning (+ ``lambda_s1`` × S1) on the world's training
    clicks, from ``init`` or from scratch.

    Args:
        world, out_dir, seed, encoder, callbacks: as :func:`pretrain`.
        cfg: :class:`~visctr.encoders.config.S2Config`; its ``s1`` objective must be the
            one ``init`` was pre-trained with (its heads are continued).
        init: an S1 ``encoder.pt`` to start from (S1+S2), or ``None`` (S2 alone).

    Returns:
        The path of ``encoder.pt``.

    Example:
        >>> s2 = visctr.finetune(world, visctr.S2Config(), "out/s2", seed=0, init=s1)  # doctest: +SKIP
    """
    objective_class(cfg.s1.method, "s2.s1.method")  # fails before any work
    out_dir = Path(out_dir)
    init_obj = None
    if init is not None:
        init = Path(init)
        init_obj = read_encoder_file(init)
    h = stage_key("s2", cfg, seed, world, init=init, encoder=encoder)
    if _cached(out_dir, h):
        print(f"[s2] up to date: {out_dir / 'encoder.pt'}", flush=True)
        return out_dir / "encoder.pt"
    click_loader = ClickPairs(world, cfg.batch_size, seed, cfg.shuffle_buffer)
    catalog = CatalogImages.from_world(world)
    c, size = _image_geometry(world)
    loaders: Any = click_loader
    if cfg.lambda_s1 > 0:
        from lightning.pytorch.utilities import CombinedLoader

        cat_loader = make_loader(
            catalog, cfg.s1_batch_size, seed + 1, cfg.num_workers,
            pin_memory=on_cuda(cfg.trainer.accelerator),
        )  # fmt: skip
        with quiet_pytree():
            loaders = CombinedLoader(
                {"click": click_loader, "catalog": cat_loader}, mode="max_size_cycle"
            )

    def build():
        if init_obj is not None:
            if encoder is None:
                _check_init_matches(init_obj["config"], cfg.encoder, init)
            enc = encoder_from_file(init_obj, init, encoder.backbone if encoder else None)
        else:
            enc = _make_encoder(cfg.encoder, world, encoder)
        pool = None
        if cfg.extra_negatives > 0:
            pool = NegativePool(catalog, exposed_rows(world, catalog, cfg.negatives_from))
        keys = click_loader.clicked_keys()
        return S2Method(enc, cfg, seed, keys, pool, _probe(catalog, cfg, seed))

    method = _seeded(seed, build)
    if init_obj is not None and not method.load_s1_heads(init_obj.get("heads", {}), str(init)):
        if method.objective is not None:
            print(f"[s2] {init} has no S1 heads: the S1 term starts with new ones", flush=True)
    spec = encoder_spec(method.encoder, None if encoder else cfg.encoder, c, size)
    return _fit("s2", method, loaders, cfg, out_dir, seed, h, spec, callbacks)


def _check_init_matches(spec: dict, cfg: EncoderConfig, init: Path) -> None:
    want = {
        "backbone": cfg.backbone,
        "backbone_kwargs": cfg.backbone_kwargs(),
        "embed_dim": cfg.embed_dim,
    }
    got = {k: spec.get(k) for k in want}
    if got != want:
        raise ConfigError(
            f"{init}: the init encoder has {got}, but the finetune config's "
            f"encoder asks for {want}; make the encoder sections match"
        )
