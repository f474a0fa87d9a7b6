"""Train one CTR model (one per method) from a world + embeddings, and predict with it.

Evaluation (metrics over the test and random-exposure splits) is ``visctr.eval.ctr``.

Artifacts in ``out_dir`` (each written atomically): ``model.pt`` (weights + config,
``weights_only``-loadable), ``feature_map.json``, ``history.json``, ``debias.pt`` when
debiasing, and ``stage.json`` (:mod:`visctr.stagedir`), written last: a directory whose
record is not ``done`` is incomplete. A killed run resumes from ``checkpoints/last.ckpt``
when its key (:func:`run_key`) is unchanged; a finished one whose outputs are unchanged
is skipped.
"""

from __future__ import annotations

import math
import os
import shlex
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from visctr.config import config_hash, from_dict, to_dict
from visctr.ctr.batch import BatchPacker
from visctr.ctr.config import CTRConfig
from visctr.ctr.feature_map import FeatureMap
from visctr.ctr.model import CTRNet, arch_factory, build_ctr_net
from visctr.ctr.stats import compute_train_stats
from visctr.ctr.stream import Grouped, ImpressionStream
from visctr.ctr.trainer import CTRModule
from visctr.ctr.visual import load_embeddings
from visctr.embeddings import check_trained_on, made_by
from visctr.errors import ConfigError, InputError
from visctr.io import claim_out_dir, load_torch, save_torch, write_json
from visctr.s3.artifact import export_debias
from visctr.s3.terms import debias_data
from visctr.stagedir import StageDir, content_digest, finished
from visctr.world.store import World

MODEL_FORMAT = 2  # 2: the MLP's first layer as two weight blocks (deep_in.a/b)
PREDICT_BATCH = 8192


OUTPUTS = ("model.pt", "feature_map.json", "debias.pt")  # what the stage's digest covers


def run_key(
    world: World, embeddings: Path, cfg: CTRConfig, seed: int, reference: Path | None
) -> str:
    """The run's key: config, seed and the *content* of what it reads (world tables and
    training log, embeddings, S1 reference), so replaced inputs under the same paths
    retrain instead of reprinting a stale model's metrics."""

    def content(root: Path | None, files: tuple[str, ...]) -> str | None:
        return None if root is None else content_digest(root, files)

    world_files = ("items.parquet", "users.parquet", "impressions/train.parquet")
    emb_files = ("items.parquet", "queries.parquet")
    ctr = to_dict(cfg)
    ctr["trainer"].pop("logger", None)  # where metrics are logged does not change the model
    return config_hash(
        {
            "ctr": ctr,
            "format": MODEL_FORMAT,
            "seed": seed,
            "world": content(Path(world.root), world_files),
            "embeddings": content(embeddings, emb_files),
            "reference": content(reference, ("items.parquet",)),
        }
    )


def _cpp_compiler() -> str | None:
    """The C++ compiler torch.compile's CPU backend would find, if any."""
    cxx = shlex.split(os.environ.get("CXX", ""))  # e.g. "ccache g++": its first word runs
    names = cxx[:1] or ["g++", "clang++", "c++"]
    return next((p for p in map(shutil.which, names) if p), None)


def train_ctr(
    world: World,
    embeddings: Path,
    out_dir: Path,
    cfg: CTRConfig,
    seed: int,
    reference: Path | None = None,
) -> Path:
    """Train one CTR model (with S3 when ``cfg.debias.enabled``); early stopping on
    validation AUC.

    Args:
        world: the world whose training log it learns from.
        embeddings: an embeddings directory (``visctr embed``) of one encoder.
        out_dir: written with ``model.pt``, ``feature_map.json``, ``history.json`` (and
            ``debias.pt`` with S3); a finished model of the same inputs is reused.
        cfg: :class:`~visctr.ctr.config.CTRConfig`; ``cfg.debias`` is S3's
            :class:`~visctr.s3.config.DebiasConfig` (the YAML section ``ctr.debias``).
        seed: fixes the initialisation and the batch order.
        reference: the S1 embeddings directory, S3's unbiased reference; required when
            ``cfg.debias.enabled``.

    Returns:
        ``out_dir``.

    Example:
        >>> cfg = visctr.CTRConfig(debias=visctr.DebiasConfig(enabled=True))  # doctest: +SKIP
        >>> visctr.train_ctr(world, "emb/s1_s2", "out/ctr_d", cfg, seed=0,     # doctest: +SKIP
        ...                  reference="emb/s1")
    """
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping
    from torch.utils.data import DataLoader

    from visctr.train import build_trainer, resume_checkpoint

    out_dir = Path(out_dir)
    if cfg.debias.enabled and cfg.debias.needs_reference and reference is None:
        raise InputError(
            "debiasing needs the S1 reference embeddings: pass --reference DIR "
            "(or reference=...), turn debias off, or set debias.weight and "
            "debias.relational_weight to 0 (the head trained by the click loss alone)"
        )
    arch_factory(cfg.arch)  # an unknown architecture fails before any work
    key = run_key(world, embeddings, cfg, seed, reference)
    record = StageDir(out_dir, key, OUTPUTS)
    if record.cached() is not None:
        return out_dir
    on_cpu = cfg.trainer.accelerator == "cpu" or not torch.cuda.is_available()
    if cfg.compile and on_cpu and not _cpp_compiler():
        raise ConfigError(
            "ctr.compile on CPU needs a C++ compiler (g++, clang++ or $CXX) for "
            "torch.compile; install one or set ctr.compile: false"
        )
    t0 = time.perf_counter()
    emb = load_embeddings(Path(embeddings), world)
    stats = compute_train_stats(world, emb, cfg)
    fmap = stats.feature_map
    s3 = None  # what trains the S3 head (None: the click loss alone)
    if cfg.debias.enabled:
        ref_vectors, usable = None, emb.item_has_vector
        if cfg.debias.needs_reference:
            ref = load_embeddings(Path(reference), world, queries=False)
            if ref.dim != emb.dim:
                raise InputError(
                    f"{ref.items_path}: reference vectors have width {ref.dim} but "
                    f"{emb.items_path} has width {emb.dim}; use the S1 embeddings of "
                    "the same backbone"
                )
            ref_vectors, usable = ref.item_vectors, usable & ref.item_has_vector
        s3 = debias_data(ref_vectors, usable, stats.item_counts, cfg.debias, emb.item_vectors)

    # inputs are valid: only now touch out_dir
    claim_out_dir(out_dir, "ctr")
    record.start()  # checkpoints of another key are removed: only this run resumes
    resume = resume_checkpoint(out_dir)

    L.seed_everything(seed, workers=True, verbose=False)
    net = build_ctr_net(cfg, fmap, stats.affinity, s3)
    net.set_visual_tables(emb.item_vectors, emb.query_vectors)
    weights = None
    if cfg.ips.enabled:
        from visctr.ctr.ips import IPSWeights

        weights = IPSWeights.estimate(
            fmap,
            stats.item_counts,
            stats.position_impressions,
            stats.position_clicks,
            cfg.ips.clip,
            cfg.ips.exposure,
        )
    train_path = world.impressions_path("train")
    fit_ds = ImpressionStream(
        train_path,
        BatchPacker(fmap, emb),
        cfg.batch_size,
        part="fit",
        val_start=fmap.val_start,
        shuffle=True,
        seed=seed,
        shuffle_buffer=cfg.shuffle_buffer,
        read_rows=cfg.read_rows,
        rows=stats.n_fit,
    )
    module = CTRModule(net, cfg, seed, weights, stream=fit_ds)  # resume continues fit_ds
    loaders = {"train_dataloaders": DataLoader(Grouped(fit_ds, cfg.inner_steps), batch_size=None)}
    callbacks = []
    if stats.n_val > 0:
        val_ds = ImpressionStream(
            train_path,
            BatchPacker(fmap, emb, fixed_position=0),
            PREDICT_BATCH,
            part="val",
            val_start=fmap.val_start,
            read_rows=cfg.read_rows,
            shard=False,  # every rank scores the same rows: one exact AUC, same on all ranks
        )
        loaders["val_dataloaders"] = DataLoader(val_ds, batch_size=None)
        callbacks.append(
            EarlyStopping(monitor="val_auc", mode="max", patience=cfg.patience, check_finite=False)
        )
    trainer = build_trainer(
        cfg.trainer,
        out_dir,
        cfg.max_epochs,
        callbacks=callbacks,
        log_every_n_steps=10_000,
        limit_val_batches=max(1, math.ceil(cfg.max_validation_rows / PREDICT_BATCH)),
    )
    if resume is not None:
        print(f"[ctr] resuming from {resume}", flush=True)
    with warnings.catch_warnings():
        # periodic checkpoints hold the state after the step, which is what resume needs
        warnings.filterwarnings("ignore", message=".*manual optimization and every_n_train_steps")
        trainer.fit(module, ckpt_path=str(resume) if resume else None, **loaders)
    if module.best_state is not None:
        net.load_state_dict(module.best_state)
    if trainer.global_rank != 0:
        return out_dir

    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    blob = {"format": MODEL_FORMAT, "config": to_dict(cfg), "seed": seed, "state_dict": state}
    encoder_digest = made_by(embeddings)
    if encoder_digest is not None:  # the encoder whose vectors the model learned to read
        blob["embeddings_encoder"] = encoder_digest
    save_torch(blob, out_dir / "model.pt")
    fmap.save(out_dir / "feature_map.json")
    write_json(module.history, out_dir / "history.json")
    if cfg.debias.enabled and net.debias is not None:
        export_debias(
            net.debias,
            cfg.debias,
            emb.dim,
            out_dir / "debias.pt",
            np.asarray(fmap.item_ids, dtype=np.int64),
            np.asarray(fmap.item_pop_bucket, dtype=np.int64),
            encoder_digest,
        )
    else:
        (out_dir / "debias.pt").unlink(missing_ok=True)
    shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
    record.finish(
        time.perf_counter() - t0,
        {
            "seed": seed,
            "debias": cfg.debias.enabled,
            "epochs": len(module.history),
            "best_val_auc": None if not math.isfinite(module.best_auc) else module.best_auc,
            "train_impressions": stats.n_fit,
            "val_impressions": stats.n_val,
        },
    )
    return out_dir


def load_model(model_dir: Path, world: World, embeddings: Path) -> tuple[CTRNet, BatchPacker]:
    """The trained network (visual tables from ``embeddings``) and its eval-time packer."""
    model_dir = Path(model_dir)
    if finished(model_dir) is None:
        raise InputError(
            f"{model_dir}: no finished CTR model here (its stage.json does not say done); "
            "run 'visctr train-ctr' first"
        )
    fmap = FeatureMap.load(model_dir / "feature_map.json")
    cfg, state, trained_on = _load_weights(model_dir / "model.pt", fmap)
    emb = load_embeddings(Path(embeddings), world)
    check_trained_on(embeddings, trained_on, model_dir / "model.pt")
    packer = BatchPacker(fmap, emb, fixed_position=0)
    net = build_ctr_net(cfg, fmap, state["user_affinity"])
    net.load_state_dict(state)
    net.set_visual_tables(emb.item_vectors, emb.query_vectors)
    net.eval()
    return net, packer


def _load_weights(
    path: Path, fmap: FeatureMap
) -> tuple[CTRConfig, dict[str, torch.Tensor], str | None]:
    """The config and weights of a ``model.pt`` after checking them against the feature
    map: the format, a valid config, exactly the network's tensors with its shapes, float
    and finite. Nothing is allocated for a network before its weights are known to fit.
    Third: the digest of the encoder whose embeddings it was trained on, if recorded."""
    from visctr.errors import VisctrError
    from visctr.io import check_state_dict, field

    blob = load_torch(path)
    if not isinstance(blob, dict) or blob.get("format") != MODEL_FORMAT:
        raise InputError(
            f"{path}: not a visctr CTR model of format {MODEL_FORMAT} (found "
            f"{str(blob.get('format'))[:20] if isinstance(blob, dict) else type(blob).__name__}); "
            "retrain it with this version"
        )
    known = {"format", "config", "seed", "state_dict", "embeddings_encoder"}
    extra = sorted(set(blob) - known, key=str)
    if extra:
        raise InputError(f"{path}: unexpected field {str(extra[0])[:40]!r} in a CTR model")
    field(blob, "seed", path, int)
    trained_on = blob.get("embeddings_encoder")
    if trained_on is not None:
        trained_on = field(blob, "embeddings_encoder", path, str)
    try:
        cfg = from_dict(CTRConfig, field(blob, "config", path, dict), where=f"{path}: config")
        factory = arch_factory(cfg.arch)
    except VisctrError as e:
        raise InputError(str(e) if str(e).startswith(str(path)) else f"{path}: {e}") from None
    state = field(blob, "state_dict", path, dict)
    n_users = fmap.fields[0].vocab  # the user field: vocabulary + the unknown row
    with torch.device("meta"):  # shapes only
        reference = factory(fmap, cfg, torch.zeros(n_users, fmap.n_categories))
    check_state_dict(state, reference, path, "weights")
    for k, v in state.items():
        if not v.is_floating_point() or not bool(torch.isfinite(v).all()):
            raise InputError(f"{path}: weights: tensor {k!r} is not finite floating point")
    return cfg, state, trained_on


def predict_ctr(
    model_dir: Path, world: World, embeddings: Path, split: str
) -> dict[str, np.ndarray]:
    """Click probabilities for every impression of ``split``, all shown at position 0.

    Returns ``labels`` (int8), ``probs`` (float32), ``query_id``, ``item_id`` (int64), in
    file order.
    """
    net, packer = load_model(model_dir, world, embeddings)
    ds = ImpressionStream(world.impressions_path(split), packer, PREDICT_BATCH)
    probs, labels, items, queries = [], [], [], []
    with torch.inference_mode():
        for batch in ds:
            probs.append(torch.sigmoid(net(batch)).numpy())
            labels.append(batch.labels.numpy().astype(np.int8))
            items.append(batch.item_row.numpy())
            queries.append(batch.query_row.numpy())
    if not probs:
        raise InputError(f"{world.impressions_path(split)}: the {split!r} split is empty")
    item_rows = np.concatenate(items)
    query_rows = np.concatenate(queries)
    return {
        "labels": np.concatenate(labels),
        "probs": np.concatenate(probs).astype(np.float32),
        "query_id": packer.emb.query_ids.ids[query_rows],
        "item_id": packer.items.ids[item_rows],
    }
