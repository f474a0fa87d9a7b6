"""Hostile inputs and hostile environments: one test per class of failure, each hostile
case a parameter.

1. ``--out`` never destroys what visctr did not write (marker files, input overlap, files).
2. Artifacts follow the umask.
3. SIGTERM / Ctrl-C during training: non-zero exit, one line saying how to resume.
4. A damaged ``last.ckpt`` or a killed write's temporary files never block a rerun.
5. Loads never unpickle arbitrary objects, whatever the environment says; loaded dicts
   are checked before use.
6. Every failure of the CLI is one line: bad files in a world, bad options, bad YAML,
   file-system errors, and unexpected exceptions; KeyboardInterrupt is not hidden.
7. Config parsing is bounded (alias bombs, deep nesting, huge values, huge files).
8. Artifacts that do not belong together, numbers that cannot be right and ids of the
   wrong type are refused in one line naming the files: embeddings of another encoder or
   width, inf/NaN config numbers, NaN popularity in a world, float or text ids in an
   embeddings file, image sizes, traffic sizes and worker counts out of bounds; an index
   of another width at search. Embeddings of unknown origin get one warning line.
9. Real-world file shapes (a shop's export as Excel, pandas and phones write it): each
   either imports correctly or fails in one line naming the file, row and column, with a
   non-zero exit and nothing written.

In-process (``CliRunner``) except where a signal needs its own process.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner

from visctr.cli import main
from visctr.config import from_dict, read_yaml
from visctr.encoders import EncoderConfig, build_encoder, embed
from visctr.encoders.checkpoint import encoder_spec, read_encoder_file, save_encoder
from visctr.errors import ConfigError, InputError
from visctr.io import atomic_dir, atomic_path, load_torch
from visctr.stagedir import StageDir, finished
from visctr.train import TrainerConfig, build_trainer, resume_checkpoint
from visctr.world import World

TINY_ENCODER = EncoderConfig(width=8, stages=2, blocks=1, embed_dim=16)


# ---- shared assets and helpers ---------------------------------------------------------------


@pytest.fixture(scope="module")
def assets(tiny_world_dir, tmp_path_factory) -> dict[str, Path]:
    """A random tiny encoder and its embeddings of the tiny world."""
    d = tmp_path_factory.mktemp("hostile")
    torch.manual_seed(0)
    enc = build_encoder(TINY_ENCODER, 1, 28).eval()
    (d / "enc").mkdir()
    save_encoder(d / "enc" / "encoder.pt", enc, encoder_spec(enc, TINY_ENCODER, 1, 28))
    embed(d / "enc" / "encoder.pt", World.load(tiny_world_dir), d / "emb", device="cpu")
    return {"world": tiny_world_dir, "encoder": d / "enc" / "encoder.pt", "emb": d / "emb"}


def cli(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line(res, match: str, code: int = 2) -> None:
    """Exit ``code``, one line on stderr starting ``error:`` containing ``match``."""
    assert not isinstance(res.exception, (AssertionError, TypeError, NameError)), res.exception
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == code, (res.exit_code, res.output, res.exception)
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: ") and match in lines[0], lines[0]
    assert "Traceback" not in res.output


def assert_usage_error(res, option: str) -> None:
    """click's usage error: exit 2, names the option, no traceback."""
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    assert "Invalid value" in res.stderr and option in res.stderr, res.stderr
    assert "Traceback" not in res.output


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` (and root itself) with a digest of its bytes."""
    out = {}
    for p in [root, *sorted(root.rglob("*"))] if root.exists() else []:
        key = str(p.relative_to(root))
        out[key] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


def _png_folder(root: Path, n: int = 12) -> Path:
    from PIL import Image

    for c in ("shoes", "bags"):
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.new("L", (28, 28), 10 * i + (c == "bags") * 100).save(root / c / f"{i}.png")
    return root


def _manifest_folder(root: Path) -> Path:
    from PIL import Image

    root.mkdir(parents=True)
    for i in range(4):
        Image.new("L", (28, 28), 30 * i).save(root / f"{i}.png")
    cols = {"item_id": [0, 1, 2, 3], "image_path": [f"{i}.png" for i in range(4)]}
    cols["category"] = ["a", "b", "a", "b"]
    pq.write_table(pa.table(cols), root / "manifest.parquet")
    return root / "manifest.parquet"


def _marked(d: Path, kind: str, *files: str) -> Path:
    d.mkdir(parents=True)
    (d / ".visctr.json").write_text(json.dumps({"kind": kind, "version": 1}))
    for f in files:
        (d / f).write_text("mine")
    return d


# ---- 1. --out never destroys what visctr did not write ----------------------------------------


def _out_cases(tmp: Path, a: dict[str, Path]):
    """(args, directory that must stay byte-identical, expected words of the error)."""
    user = tmp / "user"
    user.mkdir()
    (user / "notes.txt").write_text("my thesis")
    photos = _png_folder(tmp / "photos")
    manifest = _manifest_folder(tmp / "shop")
    afile = tmp / "a-file"
    afile.write_text("keep me")
    w, e, emb = a["world"], a["encoder"], a["emb"]
    encdir = _marked(tmp / "encdir", "encoder", "encoder.pt")
    own = tmp / "own"
    shutil.copytree(e.parent, own)
    link = tmp / "link-to-world"
    link.symlink_to(w, target_is_directory=True)
    return {
        "simulate-into-user-files": (
            ["simulate", "--catalog", photos, "--out", user],
            user,
            "not written by visctr",
        ),
        "simulate-into-its-catalog-folder": (
            ["simulate", "--catalog", photos, "--out", photos],
            photos,
            "is the input",
        ),
        "simulate-into-the-manifest-folder": (
            ["simulate", "--catalog", manifest, "--out", manifest.parent],
            manifest.parent,
            "contains the input",
        ),
        "simulate-over-a-file": (
            ["simulate", "--catalog", photos, "--out", afile],
            tmp,
            "is not a directory",
        ),
        "run-into-user-files": (
            ["run", "--preset", "tiny", "--catalog", photos, "--out", user],
            user,
            "not written by visctr",
        ),
        "export-into-its-embeddings": (
            ["export", "--encoder", e, "--embeddings", emb, "--out", emb],
            emb,
            "is the input",
        ),
        "embed-into-its-world": (
            ["embed", "--world", w, "--encoder", e, "--out", w],
            w,
            "is the input",
        ),
        "embed-into-a-symlink-to-its-world": (
            ["embed", "--world", w, "--encoder", e, "--out", link],
            w,
            "is the input",
        ),
        "embed-into-an-encoder-directory": (
            ["embed", "--world", w, "--encoder", e, "--out", encdir],
            encdir,
            "visctr encoder",
        ),
        "pretrain-inside-its-world": (
            ["pretrain", "--world", w, "--out", w / "enc", "--epochs", 1],
            w,
            "is inside the input",
        ),
        "finetune-over-its-init": (
            ["finetune", "--world", w, "--init", own / "encoder.pt", "--out", own],
            own,
            "contains the input",
        ),
        "train-ctr-into-its-embeddings": (
            ["train-ctr", "--world", w, "--embeddings", emb, "--out", emb],
            emb,
            "is the input",
        ),
        "train-ctr-over-a-file": (
            ["train-ctr", "--world", w, "--embeddings", emb, "--out", afile],
            tmp,
            "is not a directory",
        ),
        "evaluate-metrics-into-its-embeddings": (
            ["evaluate", "--world", w, "--embeddings", emb, "--out", emb / "m.json"],
            emb,
            "is inside the input",
        ),
        "evaluate-over-a-non-json-file": (
            ["evaluate", "--world", w, "--embeddings", emb, "--out", afile],
            tmp,
            "not a JSON file written by visctr",
        ),
    }


OUT_CASES = [
    "simulate-into-user-files",
    "simulate-into-its-catalog-folder",
    "simulate-into-the-manifest-folder",
    "simulate-over-a-file",
    "run-into-user-files",
    "export-into-its-embeddings",
    "embed-into-its-world",
    "embed-into-a-symlink-to-its-world",
    "embed-into-an-encoder-directory",
    "pretrain-inside-its-world",
    "finetune-over-its-init",
    "train-ctr-into-its-embeddings",
    "train-ctr-over-a-file",
    "evaluate-metrics-into-its-embeddings",
    "evaluate-over-a-non-json-file",
]


@pytest.mark.parametrize("case", OUT_CASES)
def test_out_never_destroys_what_visctr_did_not_write(case, assets, tmp_path):
    a = dict(assets)
    # the world and embeddings are copied so a failure here cannot spoil other tests
    a["world"] = tmp_path / "world"
    shutil.copytree(assets["world"], a["world"])
    a["emb"] = tmp_path / "emb"
    shutil.copytree(assets["emb"], a["emb"])
    (tmp_path / "t").mkdir()
    args, watched, match = _out_cases(tmp_path / "t", a)[case]
    before = snapshot(watched)
    res = cli(*args)
    assert_one_line(res, match)
    assert snapshot(watched) == before
    assert not list(watched.parent.glob(".*.old")) and not list(watched.glob(".*.old"))


def test_out_replaces_its_own_kind_whole(tiny_world_dir, assets, tmp_path):
    """A directory visctr marked is rewritten (atomically, leftovers of a killed write swept);
    the new write is complete or absent, never mixed."""
    w = World.load(tiny_world_dir)
    out = tmp_path / "emb"
    embed(assets["encoder"], w, out, device="cpu")
    assert json.loads((out / ".visctr.json").read_text()) == {"kind": "embeddings", "version": 1}
    (tmp_path / ".emb.abcd1234.tmp").mkdir()  # a killed earlier write
    (tmp_path / ".emb.efgh5678.tmp").write_text("half")
    embed(assets["encoder"], w, out, device="cpu")
    assert sorted(p.name for p in out.iterdir()) == [
        ".visctr.json",
        "items.parquet",
        "queries.parquet",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb"]
    # a failure mid-write leaves the previous pair in place
    before = snapshot(out)
    with pytest.raises(RuntimeError), atomic_dir(out, kind="embeddings") as tmp:
        (tmp / "items.parquet").write_text("half")
        raise RuntimeError("killed")
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb"]


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_artifacts_follow_the_umask(umask, tiny_world_dir, assets, tmp_path):
    from visctr.serve.export import IndexConfig, export_artifacts

    old = os.umask(umask)
    try:
        with atomic_path(tmp_path / "f.json") as p:
            p.write_text("{}")
        embed(assets["encoder"], World.load(tiny_world_dir), tmp_path / "emb", device="cpu")
        export_artifacts(assets["encoder"], assets["emb"], tmp_path / "ex", IndexConfig("flat"))
    finally:
        os.umask(old)
    # every file of the artifacts (atomic writes, and what torch/faiss/numpy write into a
    # temporary directory renamed into place), and the directories
    files = [tmp_path / "f.json", *(tmp_path / "emb").rglob("*"), *(tmp_path / "ex").rglob("*")]
    assert {"encoder.ts", "index.faiss", "item_ids.npy", "items.parquet"} <= {f.name for f in files}
    for f in files:
        assert f.is_file() and stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask, f
    for d in (tmp_path / "ex", tmp_path / "emb"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o777 & ~umask, d


# ---- 3. signals during training ---------------------------------------------------------------

# ``visctr VERB ...`` in a child that signals itself at a fixed training step: deterministic,
# no race with the machine's speed.
SIGNAL_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    import lightning as L
    import visctr.encoders.stages as stages
    import visctr.train as train

    SIG, AT = getattr(signal, sys.argv[1]), int(sys.argv[2])

    class SendSignal(L.Callback):
        sent = False

        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step >= AT and not self.sent:
                self.sent = True
                os.kill(os.getpid(), SIG)

    real = train.build_trainer

    def build_trainer(cfg, out_dir, max_epochs, callbacks=None, **kw):
        return real(cfg, out_dir, max_epochs, callbacks=[*(callbacks or []), SendSignal()], **kw)

    train.build_trainer = stages.build_trainer = build_trainer
    from visctr.cli import main

    main(sys.argv[3:], prog_name="visctr")
    """
)

PRETRAIN_CFG = """
pretrain:
  epochs: 2
  batch_size: 16
  probe_items: 0
  encoder: {width: 8, stages: 2, blocks: 1, embed_dim: 16}
trainer:
  checkpoint_every_n_steps: 1000
  progress_bar: false
"""

CTR_CFG = """
max_epochs: 2
batch_size: 64
trainer:
  checkpoint_every_n_steps: 1000
  progress_bar: false
"""


def _verb_args(verb: str, a: dict[str, Path], out: Path, tmp: Path) -> list[str]:
    cfg = tmp / f"{verb}.yaml"
    cfg.write_text(PRETRAIN_CFG if verb == "pretrain" else CTR_CFG)
    inputs = ["--world", a["world"]] + ([] if verb == "pretrain" else ["--embeddings", a["emb"]])
    return [str(x) for x in [verb, *inputs, "--out", out, "--config", cfg, "--accelerator", "cpu"]]


def _run(args: list[str], child: str | None = None, *extra: str):
    env = {**os.environ, "VISCTR_QUIET": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", child, *extra] if child else [sys.executable, "-m", "visctr.cli"]
    return subprocess.run(
        [*cmd, *args], env=env, capture_output=True, text=True, timeout=300,
        # Ctrl-C as in a terminal, even when the suite runs as a background job (which
        # inherits SIGINT ignored, and Python then keeps ignoring it)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip


@pytest.mark.parametrize(
    "verb,sig,code",
    [("pretrain", "SIGTERM", 143), ("train-ctr", "SIGTERM", 143), ("pretrain", "SIGINT", 130)],
)
def test_signal_during_training_exits_nonzero_and_says_how_to_resume(
    verb, sig, code, assets, tmp_path
):
    out = tmp_path / "out"
    args = _verb_args(verb, assets, out, tmp_path)
    proc = _run(args, SIGNAL_CHILD, sig, "3")
    assert proc.returncode == code, proc.stderr[-3000:]
    # (library warnings aside) one line of visctr's own, no traceback
    lines = [line for line in proc.stderr.splitlines() if line.startswith("visctr:")]
    assert len(lines) == 1 and "rerun the same command" in lines[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    final = "encoder.pt" if verb == "pretrain" else "model.pt"
    assert not (out / final).exists() and finished(out) is None
    ckpt = out / "checkpoints" / "last.ckpt"
    if sig == "SIGTERM":  # a checkpoint of the step it stopped at
        assert "SIGTERM" in lines[0] and str(ckpt) in lines[0]
        assert torch.load(ckpt, weights_only=True)["global_step"] >= 3
        res = _run(args)
        assert res.returncode == 0, res.stderr[-3000:]
        assert (out / final).is_file() and finished(out) is not None
        if verb == "pretrain":
            assert "resuming from" in res.stdout


# ---- 4. damaged checkpoints and temporary files never block a rerun ---------------------------


def _evil(marker: Path) -> object:
    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    return {"state_dict": {}, "payload": Evil()}


DAMAGE = {
    "truncated": lambda p, m: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "empty": lambda p, m: p.write_bytes(b""),
    "garbage": lambda p, m: p.write_bytes(os.urandom(4096)),
    "planted-pickle": lambda p, m: torch.save(_evil(m), p),
}


@pytest.fixture(scope="module")
def finished_s1(tiny_world_dir, tmp_path_factory) -> Path:
    from visctr.encoders import S1Config, S1ObjectiveConfig, pretrain

    # what `visctr pretrain --config` below resolves (the small preset's InfoNCE objective),
    # so that the verb resumes this stage
    cfg = S1Config(
        encoder=TINY_ENCODER, epochs=1, batch_size=64, probe_items=0,
        objective=S1ObjectiveConfig(method="infonce"),
        trainer=TrainerConfig(accelerator="cpu", progress_bar=False, checkpoint_every_n_steps=2),
    )  # fmt: skip
    out = tmp_path_factory.mktemp("s1") / "s1"
    pretrain(World.load(tiny_world_dir), cfg, out, 0)
    assert (out / "checkpoints" / "last.ckpt").is_file()
    return out


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_checkpoint_is_moved_aside_and_the_stage_starts_afresh(
    damage, finished_s1, tiny_world_dir, tmp_path, monkeypatch, capfd
):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    out = tmp_path / "s1"
    shutil.copytree(finished_s1, out)
    _unfinish(out)  # killed before the end: the next run resumes
    ckpt = out / "checkpoints" / "last.ckpt"
    marker = tmp_path / "pwned"
    DAMAGE[damage](ckpt, marker)
    # what a kill during an atomic write leaves behind
    (out / ".encoder.pt.k2j4l5m6.tmp").write_bytes(b"half")
    (out / "checkpoints" / "last.ckpt.tmp").write_bytes(b"half")
    capfd.readouterr()
    res = cli(
        "pretrain", "--world", tiny_world_dir, "--out", out, "--accelerator", "cpu",
        "--config", _write(tmp_path / "c.yaml", "pretrain:\n  epochs: 1\n  batch_size: 64\n"
                           "  probe_items: 0\n  encoder: {width: 8, stages: 2, blocks: 1, "
                           "embed_dim: 16}\ntrainer: {checkpoint_every_n_steps: 2, "
                           "progress_bar: false}\n"),
        "--seed", 0,
    )  # fmt: skip
    err = capfd.readouterr().err + res.stderr
    assert res.exit_code == 0, (res.output, err)
    assert not marker.exists()
    warn = [line for line in err.splitlines() if "last.ckpt" in line]
    assert len(warn) == 1 and "cannot resume" in warn[0] and "afresh" in warn[0], err
    assert (out / "checkpoints" / "last.ckpt.corrupt").is_file()
    assert (out / "encoder.pt").is_file() and finished(out) is not None
    assert not list(out.rglob("*.tmp"))


def _unfinish(out: Path) -> None:
    """What a stage killed after its checkpoint, before its end, leaves: a running record."""
    rec = json.loads((out / "stage.json").read_text())
    (out / "stage.json").write_text(json.dumps({**rec, "state": "running"}))


def _write(p: Path, text: str) -> Path:
    p.write_text(text)
    return p


def test_resume_checkpoint_sweeps_and_checks(tmp_path, capfd):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / ".history.json.a1b2c3d4.tmp").write_text("x")
    (tmp_path / "checkpoints" / "last.ckpt.tmp").write_text("x")
    (tmp_path / "notes.tmp").write_text("not ours")  # not the temporary-name pattern
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"PK\x03\x04 truncated")
    assert resume_checkpoint(tmp_path) is None
    assert sorted(p.name for p in tmp_path.rglob("*")) == [
        "checkpoints", "last.ckpt.corrupt", "notes.tmp"
    ]  # fmt: skip
    assert len(capfd.readouterr().err.strip().splitlines()) == 1


# ---- 5. loads never unpickle arbitrary objects; loaded dicts are checked ----------------------


def _lightning_resume(path: Path, tmp: Path) -> None:
    import lightning as L

    class M(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 1)

        def training_step(self, batch, _):
            return self.lin(batch[0]).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(4, 2)), 2)
    cfg = TrainerConfig(accelerator="cpu", progress_bar=False)
    # no weights_only here, as a caller may forget it: the trainer must load safely anyway
    build_trainer(cfg, tmp / "run", max_epochs=1).fit(M(), loader, ckpt_path=str(path))


def _ctr_resume(path: Path, tmp: Path, a: dict[str, Path]) -> None:
    """A planted ``last.ckpt`` in a CTR output folder whose running record matches:
    train-ctr resumes from it."""
    from visctr.ctr import CTRConfig, train_ctr
    from visctr.ctr.training import OUTPUTS, run_key

    world = World.load(a["world"])
    cfg = CTRConfig(
        max_epochs=1, batch_size=256, trainer=TrainerConfig(accelerator="cpu", progress_bar=False)
    )
    out = _marked(tmp / "ctr", "ctr")  # what a killed train-ctr leaves behind
    StageDir(out, run_key(world, a["emb"], cfg, 0, None), OUTPUTS).start()
    (out / "checkpoints").mkdir()
    shutil.copy(path, out / "checkpoints" / "last.ckpt")
    train_ctr(world, a["emb"], out, cfg, 0)


LOADERS = {
    "load_torch": lambda p, t, a: load_torch(p),
    "encoder-file": lambda p, t, a: read_encoder_file(p),
    "debias-file": lambda p, t, a: __import__("visctr.s3.artifact").s3.artifact.load_debias(p),
    "lightning-resume": lambda p, t, a: _lightning_resume(p, t),
    "ctr-resume": lambda p, t, a: _ctr_resume(p, t, a),
}


@pytest.mark.parametrize("loader", list(LOADERS))
def test_planted_pickle_never_runs(loader, assets, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save(_evil(marker), evil)
    error = None
    try:
        LOADERS[loader](evil, tmp_path, assets)
    except Exception as e:  # noqa: BLE001 (what matters first is whether the pickle ran)
        error = e
    assert not marker.exists(), "the planted pickle ran"
    if error is not None:  # refused: one clear line naming the file
        assert isinstance(error, InputError), repr(error)
        assert str(evil) in str(error) and "\n" not in str(error)


def _encoder_blob(**change) -> dict:
    enc = build_encoder(TINY_ENCODER, 1, 28)
    blob = {
        "format": "visctr-encoder/1",
        "config": encoder_spec(enc, TINY_ENCODER, 1, 28),
        "state_dict": enc.state_dict(),
        "heads": {},
        "meta": {},
    }
    for k, v in change.items():
        target, key = (blob["config"], k[4:]) if k.startswith("cfg_") else (blob, k)
        if key.startswith("kw_"):
            target, key = blob["config"]["backbone_kwargs"], key[3:]
        if v is KeyError:
            del target[key]
        else:
            target[key] = v
    return blob


def _debias_blob(**change) -> dict:
    from visctr.s3.net import DebiasHead

    blob = {
        "format": 1, "dim": 16, "hidden": 8, "retrieval_vector": "gated",
        "state_dict": DebiasHead(16, 8).state_dict(),
    }  # fmt: skip
    for k, v in change.items():
        if v is KeyError:
            del blob[k]
        else:
            blob[k] = v
    return blob


def _exposure_blob(**change) -> dict:
    """An exposure-aware head's debias.pt (``debias.gate_exposure``), then ``change``."""
    from visctr.s3.net import DebiasHead

    base = {
        "state_dict": DebiasHead(16, 8, n_buckets=4).state_dict(),
        "exposure_buckets": 4,
        "item_ids": torch.tensor([1, 2, 3]),
        "item_buckets": torch.tensor([0, 1, 3]),
    }
    merged = {**base, **change}
    return _debias_blob(**{k: v for k, v in merged.items() if v is not KeyError})


def _bad_weights():
    sd = build_encoder(TINY_ENCODER, 1, 28).state_dict()
    sd["projection.weight"] = torch.zeros(3, 3)
    return sd


BAD_FILES = {
    # encoder.pt: a hostile architecture would allocate without bound before the weights fail
    "encoder-width-1e6": ("enc", lambda: _encoder_blob(cfg_kw_width=10**6), "width"),
    "encoder-stages-1000": ("enc", lambda: _encoder_blob(cfg_kw_stages=1000), "stages"),
    "encoder-embed-dim-1e9": ("enc", lambda: _encoder_blob(cfg_embed_dim=10**9), "embed_dim"),
    "encoder-image-size-1e6": ("enc", lambda: _encoder_blob(cfg_image_size=10**6), "image_size"),
    "encoder-no-channels": ("enc", lambda: _encoder_blob(cfg_in_channels=KeyError), "in_channels"),
    "encoder-channels-a-string": ("enc", lambda: _encoder_blob(cfg_in_channels="1"), "in_channels"),
    "encoder-std-zero": ("enc", lambda: _encoder_blob(cfg_std=0.0), "std"),
    "encoder-unknown-option": ("enc", lambda: _encoder_blob(cfg_kw_depth=3), "depth"),
    "encoder-config-a-list": ("enc", lambda: _encoder_blob(config=[1, 2]), "config"),
    "encoder-weights-wrong-shape": (
        "enc",
        lambda: _encoder_blob(state_dict=_bad_weights()),
        "projection.weight",
    ),  # fmt: skip
    "encoder-weights-not-tensors": (
        "enc",
        lambda: _encoder_blob(state_dict={"a": 1}),
        "not a named tensor",
    ),  # fmt: skip
    "encoder-heads-a-list": ("enc", lambda: _encoder_blob(heads=[1]), "heads"),
    # debias.pt
    "debias-dim-1e9": ("debias", lambda: _debias_blob(dim=10**9), "dim"),
    "debias-hidden-negative": ("debias", lambda: _debias_blob(hidden=-1), "hidden"),
    "debias-dim-a-string": ("debias", lambda: _debias_blob(dim="16"), "dim"),
    "debias-dim-true": ("debias", lambda: _debias_blob(dim=True), "dim"),
    "debias-no-weights": ("debias", lambda: _debias_blob(state_dict=KeyError), "state_dict"),
    "debias-unknown-mode": ("debias", lambda: _debias_blob(retrieval_vector="x"), "retrieval"),
    "debias-embeddings-encoder-a-number": (
        "debias",
        lambda: _debias_blob(embeddings_encoder=5),
        "embeddings_encoder",
    ),
    # an exposure-aware head (debias.gate_exposure): its item table is checked too
    "debias-exposure-no-table": (
        "debias",
        lambda: _exposure_blob(item_ids=KeyError),
        "item_ids / item_buckets",
    ),
    "debias-exposure-float-ids": (
        "debias",
        lambda: _exposure_blob(item_ids=torch.zeros(3)),
        "item_ids / item_buckets",
    ),
    "debias-exposure-bucket-out-of-range": (
        "debias",
        lambda: _exposure_blob(item_buckets=torch.tensor([0, 1, 9])),
        r"\[0, 4\)",
    ),
    "debias-exposure-buckets-1e9": (
        "debias",
        lambda: _exposure_blob(exposure_buckets=10**9),
        "exposure_buckets",
    ),
    "debias-exposure-weights-of-a-plain-head": (
        "debias",
        lambda: _exposure_blob(
            state_dict=__import__("visctr.s3.net").s3.net.DebiasHead(16, 8).state_dict()
        ),
        "missing tensor 'exposure.weight'",
    ),  # fmt: skip
    "debias-weights-for-another-width": (
        "debias",
        lambda: _debias_blob(dim=32),
        "shape",
    ),  # fmt: skip
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_loaded_dicts_are_checked_before_use(case, tmp_path):
    from visctr.encoders import load_encoder
    from visctr.s3.artifact import load_debias

    kind, make, match = BAD_FILES[case]
    path = tmp_path / "f.pt"
    torch.save(make(), path)
    t0 = time.perf_counter()
    with pytest.raises(InputError, match=match) as e:
        (load_encoder if kind == "enc" else load_debias)(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    assert time.perf_counter() - t0 < 5


# ---- 6. every CLI failure is one line ---------------------------------------------------------


def _corrupt_world(tmp: Path, src: Path, what: str) -> Path:
    w = tmp / "world"
    shutil.copytree(src, w)
    if what == "items-garbage":
        (w / "items.parquet").write_bytes(b"PAR1 not really parquet")
    elif what == "queries-missing-column":
        t = pq.read_table(w / "queries.parquet").drop(["image_row"])
        pq.write_table(t, w / "queries.parquet")
    elif what == "users-garbage":
        (w / "users.parquet").write_bytes(os.urandom(300))
    elif what == "users-wrong-schema":
        pq.write_table(pa.table({"user_id": [0, 1], "affinity": ["a", "b"]}), w / "users.parquet")
    elif what == "world-json-garbage":
        (w / "world.json").write_bytes(b"{not json")
    elif what == "world-json-a-list":
        (w / "world.json").write_text("[1, 2]")
    elif what == "world-json-no-categories":
        meta = json.loads((w / "world.json").read_text())
        del meta["category_names"]
        (w / "world.json").write_text(json.dumps(meta))
    elif what == "images-garbage":
        (w / "images" / "items.npy").write_bytes(b"\x93NUMPY garbage")
    elif what == "images-float-2d":
        np.save(w / "images" / "items.npy", np.zeros((5, 5), np.float32))
    elif what == "images-too-few":
        np.save(w / "images" / "items.npy", np.zeros((3, 1, 28, 28), np.uint8))
    elif what == "impressions-garbage":
        (w / "impressions" / "train.parquet").write_bytes(b"garbage")
    elif what == "impressions-wrong-type":
        t = pq.read_table(w / "impressions" / "train.parquet")
        t = t.set_column(
            t.schema.get_field_index("clicked"), "clicked", t["clicked"].cast(pa.string())
        )
        pq.write_table(t, w / "impressions" / "train.parquet")
    elif what == "items-nan-popularity":
        t = pq.read_table(w / "items.parquet")
        pop = t["popularity"].to_numpy().copy()
        pop[3] = np.nan
        t = t.set_column(t.schema.get_field_index("popularity"), "popularity", pa.array(pop))
        pq.write_table(t, w / "items.parquet")
    return w


WORLD_CASES = {
    "items-garbage": "items.parquet: unreadable Parquet",
    "queries-missing-column": "missing column 'image_row'",
    "users-garbage": "users.parquet: unreadable Parquet",
    "users-wrong-schema": "affinity",
    "world-json-garbage": "world.json: not valid JSON",
    "world-json-a-list": "world.json: 'category_names'",
    "world-json-no-categories": "category_names",
    "images-garbage": "items.npy",
    "images-float-2d": "expected uint8 [N, C, H, W]",
    "images-too-few": "image_row",
    "impressions-garbage": "train.parquet: unreadable Parquet",
    "impressions-wrong-type": "'clicked' has type string",
    "items-nan-popularity": "row 3: popularity nan is not a finite number > 0",
}


@pytest.mark.parametrize("what", list(WORLD_CASES))
def test_damaged_world_is_one_line(what, assets, tmp_path):
    w = _corrupt_world(tmp_path, assets["world"], what)
    res = cli("train-ctr", "--world", w, "--embeddings", assets["emb"], "--out", tmp_path / "o")
    assert_one_line(res, WORLD_CASES[what])
    assert not (tmp_path / "o").exists()


def _yaml(tmp: Path, what: str) -> Path:
    p = tmp / f"{what}.yaml"
    if what == "not-utf8":
        p.write_bytes(b"pretrain:\n  epochs: 1\n  lr: \xff\xfe\n")
    elif what == "deep":
        p.write_text("pretrain: " + "[" * 20_000 + "]" * 20_000 + "\n")
    elif what == "alias-bomb":
        p.write_text(ALIAS_BOMB)
    elif what == "huge":
        p.write_text("pretrain:\n  epochs: 1\n" + "#" * (2 << 20) + "\n")
    elif what == "int-and-str-keys":
        p.write_text("pretrain:\n  1: a\n  b: 2\n")
    elif what == "tab-indent":
        p.write_text("pretrain:\n\tepochs: 1\n")
    elif what == "bad-accelerator":
        p.write_text("pretrain: {}\ntrainer:\n  accelerator: banana\n")
    elif what == "bad-devices":
        p.write_text("pretrain: {}\ntrainer:\n  devices: 0\n")
    elif what == "lr-overflows-to-inf":
        p.write_text("pretrain:\n  lr: 1.0e+400\n")
    elif what == "lr-nan":
        p.write_text("pretrain:\n  lr: .nan\n")
    return p


YAML_CASES = {
    "not-utf8": "not UTF-8",
    "deep": "nested deeper than",
    "alias-bomb": "aliases",
    "huge": "larger than 1 MiB",
    "int-and-str-keys": "unknown key 1",
    "tab-indent": "invalid YAML",
    "bad-accelerator": "accelerator must be one of",
    "bad-devices": "devices must be",
    "lr-overflows-to-inf": "expected a finite number, got inf",
    "lr-nan": "expected a finite number, got nan",
}


@pytest.mark.parametrize("what", list(YAML_CASES))
def test_bad_config_file_is_one_line(what, tiny_world_dir, tmp_path):
    cfg = _yaml(tmp_path, what)
    t0 = time.perf_counter()
    res = cli("pretrain", "--world", tiny_world_dir, "--out", tmp_path / "o", "--config", cfg)
    assert_one_line(res, YAML_CASES[what])
    assert time.perf_counter() - t0 < 20


OPTION_CASES = {
    "accelerator": (["pretrain", "--accelerator", "banana"], "--accelerator"),
    "precision": (["pretrain", "--precision", "7"], "--precision"),
    "devices-zero": (["pretrain", "--devices", "0"], "--devices"),
    "devices-word": (["pretrain", "--devices", "many"], "--devices"),
    "num-nodes": (["pretrain", "--num-nodes", "0"], "--num-nodes"),
    "strategy": (["pretrain", "--strategy", "banana"], "--strategy"),
    "epochs": (["pretrain", "--epochs", "-1"], "--epochs"),
    "seed-negative": (["pretrain", "--seed", "-1"], "--seed"),
    "seed-huge": (["simulate", "--seed", str(2**40)], "--seed"),
    "seeds-zero": (["run", "--seeds", "0"], "--seeds"),
    "device": (["embed", "--device", "banana"], "--device"),
    "batch-size": (["embed", "--batch-size", "0"], "--batch-size"),
    "top-k-zero": (["search", "--top-k", "0"], "--top-k"),
    "top-k-huge": (["search", "--top-k", str(10**12)], "--top-k"),
    "nlist": (["export", "--nlist", "-5"], "--nlist"),
    "image-size-huge": (["import", "--image-size", "100000"], "--image-size"),
    "workers-zero": (["simulate", "--workers", "0"], "--workers"),
    "run-workers-zero": (["run", "--workers", "0"], "--workers"),
    "traffic-over-the-bound": (["abtest", "--queries", str(10**8)], "--queries"),
}


@pytest.mark.parametrize("case", list(OPTION_CASES))
def test_bad_option_is_a_usage_error(case, assets, tmp_path):
    args, option = OPTION_CASES[case]
    verb = args[0]
    common = {
        "pretrain": ["--world", assets["world"], "--out", tmp_path / "o"],
        "simulate": ["--out", tmp_path / "o"],
        "run": ["--out", tmp_path / "o"],
        "embed": ["--world", assets["world"], "--encoder", assets["encoder"], "--out", tmp_path / "o"],
        "search": ["--export", tmp_path, "--image", assets["encoder"]],
        "export": ["--encoder", assets["encoder"], "--embeddings", assets["emb"], "--out", tmp_path / "o"],
        "import": ["--out", tmp_path / "o"],
        "abtest": ["--run", tmp_path],
    }[verb]  # fmt: skip
    res = cli(*args, *common)
    assert_usage_error(res, option)
    assert not (tmp_path / "o").exists()


def _raise(exc: BaseException):
    def fn(*a, **k):
        raise exc

    return fn


FAILURES = {
    # (exception raised where embed writes, exit code, words of the one line)
    "disk-full": (OSError(errno.ENOSPC, "No space left on device", "/x/items.parquet"), 2,
                  "/x/items.parquet: No space left on device; free some space"),
    "read-only": (OSError(errno.EROFS, "Read-only file system", "/x"), 2, "/x: Read-only"),
    "permission": (PermissionError(errno.EACCES, "Permission denied", "/x"), 2,
                   "/x: Permission denied; check its permissions"),
    "internal": (RuntimeError("boom"), 1,
                 "internal error (RuntimeError: boom); rerun with --debug for the traceback"),
    "internal-multiline": (ValueError("a\nb\nc"), 1, "internal error (ValueError: a b c)"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(FAILURES))
def test_unexpected_failures_are_one_line(case, assets, tmp_path, monkeypatch):
    exc, code, match = FAILURES[case]
    monkeypatch.setattr("visctr.encoders.export.write_embeddings", _raise(exc))
    args = ["embed", "--world", assets["world"], "--encoder", assets["encoder"]]
    res = cli(*args, "--out", tmp_path / "o", "--device", "cpu")
    assert_one_line(res, match, code)
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o.*"))
    res = cli("--debug", *args, "--out", tmp_path / "o", "--device", "cpu")
    assert res.exit_code == code and "Traceback" in res.stderr


def test_real_file_system_errors_are_one_line(assets, tmp_path):
    afile = tmp_path / "a-file"
    afile.write_text("x")
    args = ["embed", "--world", assets["world"], "--encoder", assets["encoder"], "--device", "cpu"]
    assert_one_line(cli(*args, "--out", afile / "sub"), str(afile))
    if os.geteuid() != 0:  # root writes through permissions
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        assert_one_line(cli(*args, "--out", ro / "emb"), str(ro))
    if not torch.cuda.is_available():
        assert_one_line(cli(*args[:-2], "--device", "cuda", "--out", tmp_path / "o"), "no CUDA")


def test_keyboard_interrupt_is_not_hidden(assets, tmp_path, monkeypatch):
    monkeypatch.setattr("visctr.encoders.export.write_embeddings", _raise(KeyboardInterrupt()))
    args = ["embed", "--world", assets["world"], "--encoder", assets["encoder"]]
    res = cli(*args, "--out", tmp_path / "o", "--device", "cpu")
    assert res.exit_code == 130 and "internal error" not in res.output
    assert "interrupted (Ctrl-C) during 'visctr embed'" in res.stderr  # one line, no traceback
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_search_on_damaged_export_is_one_line(assets, tmp_path):
    png = tmp_path / "q.png"
    from PIL import Image

    Image.new("L", (28, 28), 90).save(png)
    ex = tmp_path / "ex"
    ex.mkdir()
    (ex / "export.json").write_bytes(b"{garbage")
    assert_one_line(cli("search", "--export", ex, "--image", png), "export.json: not valid JSON")
    (ex / "export.json").write_text('{"image_size": "28", "channels": 1, "debias": false}')
    assert_one_line(cli("search", "--export", ex, "--image", png), "image_size")
    (ex / "export.json").write_text('{"image_size": 28, "channels": 1, "debias": false}')
    for name in ("encoder.ts", "index.faiss", "item_ids.npy"):
        (ex / name).write_bytes(b"garbage")
    assert_one_line(cli("search", "--export", ex, "--image", png), "encoder.ts")


# ---- 7. config parsing is bounded -------------------------------------------------------------

# 9 levels of 9 aliases: ~340 bytes that expand to 9**9 (387 million) strings
ALIAS_BOMB = "\n".join(
    ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [
        f"{x}: &{x} [{','.join(['*' + y] * 9)}]"
        for x, y in zip("bcdefghi", "abcdefgh", strict=True)
    ]
    + ["pretrain:\n  epochs: *i"]
)


def test_config_parsing_is_bounded(tmp_path):
    import yaml

    from visctr.encoders.config import S1Config

    t0 = time.perf_counter()
    p = tmp_path / "bomb.yaml"
    p.write_text(ALIAS_BOMB)
    assert len(ALIAS_BOMB) < 600
    with pytest.raises(ConfigError, match="aliases"):
        read_yaml(p)
    # a mapping that holds the expanded structure (via the Python API) gives a short message
    data = yaml.safe_load(ALIAS_BOMB)
    with pytest.raises(ConfigError) as e:
        from_dict(S1Config, data["pretrain"], "pretrain")
    assert len(str(e.value)) < 300
    with pytest.raises(ConfigError) as e:
        from_dict(S1Config, {"epochs": "x" * 10**7}, "pretrain")
    assert len(str(e.value)) < 300
    p.write_text("a: " + "[" * 20_000 + "]" * 20_000)
    with pytest.raises(ConfigError, match="nested"):
        read_yaml(p)
    assert time.perf_counter() - t0 < 10


@pytest.mark.parametrize(
    "env",
    [
        {"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"},
        {"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1", "TORCH_FORCE_WEIGHTS_ONLY_LOAD": "1"},
    ],
)
def test_load_torch_does_not_depend_on_the_environment(env, tmp_path, monkeypatch):
    """A plain checkpoint loads (torch refuses to load at all when both variables are set)."""
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    torch.save({"w": torch.ones(2)}, tmp_path / "ok.pt")
    assert torch.equal(load_torch(tmp_path / "ok.pt")["w"], torch.ones(2))
    assert os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] == "1"  # restored after the load


# ---- 8. artifacts that do not belong together; ids of the wrong type -------------------------


def _other_encoder(tmp: Path, embed_dim: int, seed: int) -> Path:
    torch.manual_seed(seed)
    cfg = EncoderConfig(width=8, stages=2, blocks=1, embed_dim=embed_dim)
    enc = build_encoder(cfg, 1, 28).eval()
    path = tmp / f"enc-{embed_dim}-{seed}" / "encoder.pt"
    path.parent.mkdir()
    save_encoder(path, enc, encoder_spec(enc, cfg, 1, 28))
    return path


def _ids_as(emb: Path, tmp: Path, cast) -> Path:
    """A copy of an embeddings folder whose items file has its ids cast by ``cast``."""
    out = tmp / "emb-ids"
    shutil.copytree(emb, out)
    t = pq.read_table(out / "items.parquet")
    i = t.schema.get_field_index("item_id")
    t = t.set_column(i, "item_id", cast(t["item_id"]))
    pq.write_table(t, out / "items.parquet")
    return out


MISMATCHES = {
    # (the verb's arguments from (assets, tmp), words of the one line, files it names)
    "export-embeddings-of-another-encoder": (
        lambda a, t: ["export", "--encoder", _other_encoder(t, 16, 1), "--embeddings", a["emb"]],
        "was made by another encoder than",
        ("items.parquet", "encoder.pt"),
    ),
    "export-embeddings-of-another-width": (
        lambda a, t: ["export", "--encoder", _other_encoder(t, 32, 0), "--embeddings", a["emb"]],
        "has 16-d vectors but",
        ("items.parquet", "encoder.pt"),
    ),
    "train-ctr-float-item-ids": (
        lambda a, t: ["train-ctr", "--world", a["world"],
                      "--embeddings", _ids_as(a["emb"], t, lambda c: c.cast(pa.float64()))],
        "column 'item_id' has type double, expected int64",
        ("items.parquet",),
    ),
    "train-ctr-text-item-ids": (
        lambda a, t: ["train-ctr", "--world", a["world"],
                      "--embeddings", _ids_as(a["emb"], t, lambda c: c.cast(pa.string()))],
        "column 'item_id' has type string, expected int64",
        ("items.parquet",),
    ),
    "train-ctr-uint64-item-ids": (
        lambda a, t: ["train-ctr", "--world", a["world"],
                      "--embeddings", _ids_as(a["emb"], t, lambda c: c.cast(pa.uint64()))],
        "column 'item_id' has type uint64, expected int64",
        ("items.parquet",),
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(MISMATCHES))
def test_artifacts_that_do_not_belong_together_are_one_line(case, assets, tmp_path):
    """Each is one line naming the files and nothing is written (an export of another
    encoder's embeddings used to serve vectors its encoder does not make, and
    ``visctr search`` then failed with an internal AssertionError)."""
    make_args, match, names = MISMATCHES[case]
    res = cli(*make_args(assets, tmp_path), "--out", tmp_path / "o")
    assert_one_line(res, match)
    for name in names:
        assert name in res.stderr, (name, res.stderr)
    assert not (tmp_path / "o").exists()


def test_a_ctr_model_refuses_embeddings_of_another_encoder(assets, tmp_path):
    """An S3 CTR model and its debias.pt record the encoder whose embeddings they learned
    to read; given another encoder's embeddings of the same width (which they used to
    score and map silently), each is one line naming both files; with their own, they
    evaluate."""
    cfg = tmp_path / "ctr.yaml"
    cfg.write_text("max_epochs: 1\n")
    model = tmp_path / "ctr"
    res = cli("train-ctr", "--world", assets["world"], "--embeddings", assets["emb"], "--debias",
              "--reference", assets["emb"], "--config", cfg, "--out", model,
              "--accelerator", "cpu")  # fmt: skip
    assert res.exit_code == 0, res.output
    other = tmp_path / "emb-other"
    other_encoder = _other_encoder(tmp_path, 16, 1)
    embed(other_encoder, World.load(assets["world"]), other, device="cpu")
    # an export of the other encoder with its own embeddings, but this model's debias.pt
    res = cli("export", "--encoder", other_encoder, "--embeddings", other,
              "--debias", model / "debias.pt", "--out", tmp_path / "x")  # fmt: skip
    assert_one_line(res, "was made by another encoder")
    assert str(model / "debias.pt") in res.stderr and not (tmp_path / "x").exists()
    for given, named in (
        (["--ctr-model", model], model / "model.pt"),
        (["--debias", model / "debias.pt"], model / "debias.pt"),
    ):
        args = ["evaluate", "--world", assets["world"], *given]
        res = cli(*args, "--embeddings", other, "--out", tmp_path / "m.json")
        assert_one_line(res, "was made by another encoder")
        assert str(other / "items.parquet") in res.stderr and str(named) in res.stderr
        assert not (tmp_path / "m.json").exists()
        res = cli(*args, "--embeddings", assets["emb"], "--out", tmp_path / "m.json")
        assert res.exit_code == 0, res.output
        (tmp_path / "m.json").unlink()


def _anonymous(emb: Path, tmp: Path) -> Path:
    """Embeddings as another tool writes them: the same ids and width, random vectors, no
    ``visctr.*`` schema metadata."""
    out = tmp / "emb-anon"
    out.mkdir()
    rng = np.random.default_rng(0)
    for name in ("items.parquet", "queries.parquet"):
        t = pq.read_table(emb / name)
        vec = rng.standard_normal((t.num_rows, 16)).astype(np.float32)
        vec /= np.linalg.norm(vec, axis=1, keepdims=True)
        col = pa.FixedSizeListArray.from_arrays(pa.array(vec.ravel()), 16)
        t = t.set_column(t.schema.get_field_index("vector"), "vector", col)
        pq.write_table(t.replace_schema_metadata(None), out / name)
    return out


UNKNOWN_ORIGIN = {
    "export": lambda a, e, t: ["export", "--encoder", a["encoder"], "--embeddings", e,
                               "--out", t / "x"],
    "evaluate": lambda a, e, t: ["evaluate", "--world", a["world"], "--embeddings", e],
    "train-ctr": lambda a, e, t: ["train-ctr", "--world", a["world"], "--embeddings", e,
                                  "--config", _write(t / "c.yaml", "max_epochs: 1\n"),
                                  "--accelerator", "cpu", "--out", t / "ctr"],
}  # fmt: skip


@pytest.mark.parametrize("verb", list(UNKNOWN_ORIGIN))
def test_embeddings_of_unknown_origin_get_one_warning(verb, assets, tmp_path):
    """Embeddings another tool wrote (no visctr provenance, random vectors of the right
    width) cannot be checked against the encoder: the verb runs and says so in one line
    naming the file; visctr's own embeddings get no such line."""
    anon = _anonymous(assets["emb"], tmp_path)
    res = cli(*UNKNOWN_ORIGIN[verb](assets, anon, tmp_path))
    assert res.exit_code == 0, res.output
    warns = [ln for ln in res.stderr.splitlines() if ln.startswith("warning: ")]
    assert len(warns) == 1, res.stderr
    assert str(anon / "items.parquet") in warns[0] and "no visctr provenance" in warns[0]
    shutil.rmtree(tmp_path / "x", ignore_errors=True)
    shutil.rmtree(tmp_path / "ctr", ignore_errors=True)
    res = cli(*UNKNOWN_ORIGIN[verb](assets, assets["emb"], tmp_path))
    assert res.exit_code == 0, res.output
    assert "warning" not in res.stderr, res.stderr


def test_search_with_an_index_of_another_width_names_both_files(assets, tmp_path):
    """An index.faiss of another width than the encoder's vectors (it used to fail as
    ``internal error (AssertionError:)``): one line naming both files and both widths."""
    import faiss
    from PIL import Image

    res = cli("export", "--encoder", assets["encoder"], "--embeddings", assets["emb"],
              "--out", tmp_path / "x")  # fmt: skip
    assert res.exit_code == 0, res.output
    index = faiss.IndexFlatIP(32)
    n = len(np.load(tmp_path / "x" / "item_ids.npy"))  # the same items, 32-d vectors
    index.add(np.random.default_rng(0).standard_normal((n, 32)).astype(np.float32))
    faiss.write_index(index, str(tmp_path / "x" / "index.faiss"))
    Image.new("L", (28, 28), 90).save(tmp_path / "q.png")
    res = cli("search", "--export", tmp_path / "x", "--image", tmp_path / "q.png")
    assert_one_line(res, "holds 32-d vectors but")
    for name in ("index.faiss", "encoder.ts", "16-d"):
        assert name in res.stderr, res.stderr


# ---- 9. real-world file shapes ------------------------------------------------------------------


@pytest.fixture(scope="module")
def shop(tiny_world_dir, tmp_path_factory) -> dict:
    """The tiny world as a shop's raw files, and the world they import to (the reference
    every reshaped copy must reproduce)."""
    from ..world.raw_files import write_raw

    d = tmp_path_factory.mktemp("shop")
    raw = write_raw(tiny_world_dir, d / "shop")
    res = _import_shop(raw, d / "reference")
    assert res.exit_code == 0, res.output
    return {**raw, "reference": d / "reference"}


def _import_shop(raw: dict, out: Path, *extra, **files) -> object:
    given = {k: files.get(k, raw[k]) for k in ("catalog", "queries", "impressions", "random")}
    args = [a for k, v in given.items() for a in (f"--{k}", v)]
    return cli("import", *args, "--split-time", raw["split_time"], *extra, "--out", out)


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def _beside(raw: dict, name: str, lines: list[str], newline="\n", bom="") -> Path:
    """A reshaped copy of a file, beside the originals (image paths are relative to it)."""
    p = Path(raw["catalog"]).parent / name
    p.write_bytes((bom + newline.join(lines) + newline).encode("utf-8"))
    return p


def _cell(lines: list[str], row: int, col: int, value: str) -> list[str]:
    import csv
    import io

    cells = next(csv.reader([lines[row + 1]]))
    cells[col] = value
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow(cells)
    return [*lines[: row + 1], buf.getvalue(), *lines[row + 2 :]]


def _photo(raw: dict, item_row: int, make) -> Path:
    """The catalog with item ``item_row``'s photo replaced by ``make(original, path)``."""
    from PIL import Image

    lines = _lines(raw["catalog"])
    cells = lines[item_row + 1].split(",")
    shop_dir = Path(raw["catalog"]).parent
    original = Image.open(shop_dir / cells[1]).convert("L")
    rel = f"reshaped/{item_row}-{make.__name__}"
    path = make(original, shop_dir / rel)
    cells[1] = str(path.relative_to(shop_dir))
    return _beside(raw, "catalog-reshaped.csv", [*lines[: item_row + 1], ",".join(cells),
                                                 *lines[item_row + 2 :]])  # fmt: skip


def _transparent(original, path):
    """A cut-out product: the photo's dark background made transparent, as RGBA PNG."""
    from PIL import Image

    path = path.with_suffix(".png")
    path.parent.mkdir(exist_ok=True)
    rgba = Image.merge("RGBA", [original] * 3 + [original.point(lambda v: 255 if v else 0)])
    rgba.save(path)
    return path


def _one_pixel(original, path):
    from PIL import Image

    path = path.with_suffix(".png")
    path.parent.mkdir(exist_ok=True)
    Image.new("L", (1, 1), 77).save(path)
    return path


def _icc_srgb(original, path):
    """An RGB JPEG carrying an sRGB ICC profile (as cameras and editors write them)."""
    from PIL import ImageCms

    path = path.with_suffix(".jpg")
    path.parent.mkdir(exist_ok=True)
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    original.convert("RGB").save(path, quality=98, icc_profile=icc)
    return path


def _phone(original, path):
    """A phone photo: stored turned a quarter, with EXIF orientation 6."""
    from PIL import Image

    path = path.with_suffix(".jpg")
    path.parent.mkdir(exist_ok=True)
    exif = Image.Exif()
    exif[0x0112] = 6
    original.transpose(Image.Transpose.ROTATE_90).save(path, quality=98, exif=exif.tobytes())
    return path


def _item_image(w: World, row: int) -> np.ndarray:
    return np.asarray(w.item_images[w.items["image_row"][row]], dtype=np.int16)


def _same_logs(w: World, ref: World) -> None:
    for split in ("train", "test", "random"):
        x, y = ref.read_impressions(split), w.read_impressions(split)
        assert all(np.array_equal(x[c], y[c]) for c in x), split
    assert np.array_equal(ref.queries["timestamp"], w.queries["timestamp"])


def _epoch_ms(lines: list[str]) -> list[str]:
    from datetime import datetime

    out = [lines[0]]
    for ln in lines[1:]:
        c = ln.split(",")
        c[3] = str(int(datetime.fromisoformat(c[3].replace("Z", "+00:00")).timestamp()) * 1000)
        out.append(",".join(c))
    return out


# each case: files (from the raw files) and extra options -> ("ok", check(world, reference))
# or ("error", words of the one line: file, row and column)
SHAPES = {
    "excel-bom-crlf": (
        lambda r: {k: _beside(r, f"{k}-excel.csv", _lines(r[k]), "\r\n", "\ufeff")
                   for k in ("catalog", "queries", "impressions", "random")},
        ("ok", lambda w, ref: _same_logs(w, ref)),
    ),
    "quoted-commas-in-category-names": (
        lambda r: {"catalog": _beside(r, "catalog-commas.csv", [_lines(r["catalog"])[0]] + [
            ln.replace(",0-c0", ',"0-c0, tops, basic"') for ln in _lines(r["catalog"])[1:]])},
        ("ok", lambda w, ref: (_same_logs(w, ref), "0-c0, tops, basic" in w.category_names)),
    ),
    "blank-trailing-lines": (
        lambda r: {"impressions": _beside(r, "imp-blank.csv", [*_lines(r["impressions"]), "", ""])},
        ("ok", _same_logs),
    ),
    "epoch-milliseconds": (
        lambda r: {"queries": _beside(r, "queries-ms.csv", _epoch_ms(_lines(r["queries"])))},
        ("ok", _same_logs),
    ),
    "mixed-id-types-in-one-column": (  # some SKUs numeric, others not, in every file
        lambda r: {k: _beside(r, f"{k}-mixed.csv", [ln.replace("sku-000007,", "7,")
                                                    for ln in _lines(r[k])])
                   for k in ("catalog", "impressions", "random")},
        ("ok", lambda w, ref: (_same_logs(w, ref), "7" in w.items["item_key"].tolist())),
    ),
    "null-like-ids": (  # a SKU "NA" and a query "null" are ids, not missing cells
        lambda r: {k: _beside(r, f"{k}-na.csv", [ln.replace("sku-000008,", "NA,").replace(
            "q-000005,", "null,") for ln in _lines(r[k])])
                   for k in ("catalog", "queries", "impressions", "random")},
        ("ok", lambda w, ref: (_same_logs(w, ref), "NA" in w.items["item_key"].tolist())),
    ),
    "transparent-png-on-white": (
        lambda r: {"catalog": _photo(r, 3, _transparent)},
        # the product keeps its pixels; the transparent background is white, not black
        ("ok", lambda w, ref: (
            np.array_equal(_item_image(w, 3)[_item_image(ref, 3) > 0],
                           _item_image(ref, 3)[_item_image(ref, 3) > 0]),
            (_item_image(w, 3)[_item_image(ref, 3) == 0] == 255).all() or pytest.fail("black"),
        )),
    ),
    "one-pixel-photo": (
        lambda r: {"catalog": _photo(r, 4, _one_pixel)},
        ("ok", lambda w, ref: (_item_image(w, 4) == 77).all() or pytest.fail("not uniform")),
    ),
    "icc-profile-srgb": (
        lambda r: {"catalog": _photo(r, 5, _icc_srgb)},
        ("ok", lambda w, ref: np.abs(_item_image(w, 5) - _item_image(ref, 5)).mean() < 3
         or pytest.fail("ICC-tagged photo decoded differently")),
    ),
    "phone-photo-exif-orientation": (
        lambda r: {"catalog": _photo(r, 6, _phone)},
        ("ok", lambda w, ref: np.abs(_item_image(w, 6) - _item_image(ref, 6)).mean() < 3
         or pytest.fail("sideways")),
    ),
    "log-joined-twice": (
        lambda r: {"impressions": _beside(r, "imp-twice.csv", [*_lines(r["impressions"]),
                                                               *_lines(r["impressions"])[1:]])},
        ("error", "imp-twice.csv: 8,000 exact duplicate impression rows (same query_id, item_id, "
                  "position and clicked; first: rows 0 and 8000)"),
    ),
    "thousands-separator": (
        lambda r: {"impressions": _beside(r, "imp-thousands.csv",
                                          _cell(_lines(r["impressions"]), 5, 2, "1,000"))},
        ("error", "imp-thousands.csv: row 5: position '1,000' is not an integer"),
    ),
    "nan-in-optional-column": (
        lambda r: {"impressions": _beside(r, "imp-nan.csv", _cell(
            [_lines(r["impressions"])[0] + ",propensity"]
            + [ln + ",0.5" for ln in _lines(r["impressions"])[1:]], 9, 4, "NaN"))},
        ("error", "imp-nan.csv: row 9: propensity nan is not in (0, 1]"),
    ),
    "empty-cell-in-optional-column": (
        lambda r: {"impressions": _beside(r, "imp-empty.csv", _cell(
            [_lines(r["impressions"])[0] + ",timestamp"]
            + [ln + ",2026-01-02T00:00:00Z" for ln in _lines(r["impressions"])[1:]], 11, 4, ""))},
        ("error", "imp-empty.csv: row 11: column 'timestamp' is empty"),
    ),
    "excel-scientific-notation-id": (
        lambda r: {"impressions": _beside(r, "imp-sci.csv",
                                          _cell(_lines(r["impressions"]), 3, 1, "1.23457E+11"))},
        ("error", "imp-sci.csv: row 3: item_id '1.23457E+11' is not in the catalog"),
    ),
    "excel-local-date": (
        lambda r: {"queries": _beside(r, "queries-date.csv",
                                      _cell(_lines(r["queries"]), 2, 3, "1/14/2026 10:00"))},
        ("error", "queries-date.csv: row 2: timestamp '1/14/2026 10:00' is neither"),
    ),
    "semicolon-separated": (
        lambda r: {"impressions": _beside(r, "imp-semi.csv",
                                          [ln.replace(",", ";") for ln in _lines(r["impressions"])])},
        ("error", "imp-semi.csv: row 0: the header 'query_id;item_id;position;clicked' is "
                  "separated by semicolons"),
    ),
    "seconds-read-as-milliseconds": (  # a wrong --timestamp-unit lands outside 1990..2100
        lambda r: {"queries": _beside(r, "queries-s.csv", [
            ln if i == 0 else ",".join([*ln.split(",")[:3], str(int(ln.split(",")[3]) // 1000)])
            for i, ln in enumerate(_epoch_ms(_lines(r["queries"])))]), "--timestamp-unit": "ms"},
        ("error", "queries-s.csv: row 0: timestamp "),
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(SHAPES))
def test_real_world_file_shapes_import_right_or_fail_in_one_line(case, shop, tmp_path):
    make, (outcome, expect) = SHAPES[case]
    files = make(shop)
    extra = [a for k in list(files) if k.startswith("--") for a in (k, files.pop(k))]
    try:
        res = _import_shop(shop, tmp_path / "w", *extra, **files)
    finally:
        for p in files.values():
            p.unlink()
        shutil.rmtree(Path(shop["catalog"]).parent / "reshaped", ignore_errors=True)
    if outcome == "ok":
        assert res.exit_code == 0, res.output
        expect(World.load(tmp_path / "w"), World.load(shop["reference"]))
    else:
        assert_one_line(res, expect)
        assert not (tmp_path / "w").exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".w.")]
