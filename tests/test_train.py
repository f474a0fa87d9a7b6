"""The shared trainer keeps one resumable checkpoint, written when configured."""

from __future__ import annotations

import lightning as L
import torch

from visctr.train import TrainerConfig, build_trainer, resume_checkpoint


class _Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 1)

    def training_step(self, batch, _):
        return self.lin(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class _Watch(L.Callback):
    """Records the global step stored in last.ckpt after every batch."""

    def __init__(self, path):
        self.path, self.seen = path, []

    def on_train_batch_end(self, trainer, *args):
        if self.path.is_file():
            self.seen.append(torch.load(self.path, weights_only=True)["global_step"])


def _fit(tmp_path, every):
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(40, 4)), 4)
    cfg = TrainerConfig(accelerator="cpu", checkpoint_every_n_steps=every, progress_bar=False)
    watch = _Watch(tmp_path / "checkpoints" / "last.ckpt")
    build_trainer(cfg, tmp_path, max_epochs=2, callbacks=[watch]).fit(_Tiny(), loader)
    return watch.seen


def test_step_checkpoints_appear_during_the_epoch(tmp_path):
    seen = _fit(tmp_path, every=3)
    assert seen and seen[0] == 3 and max(seen) >= 18  # steps 3, 6, ... of 20
    assert resume_checkpoint(tmp_path) is not None
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))


def test_epoch_end_checkpoints(tmp_path):
    seen = _fit(tmp_path, every=0)
    assert set(seen) == {10}  # saved after epoch 1, visible during epoch 2
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1


class _Multi(_Tiny):
    """Manual optimisation with 3 optimiser steps per batch: global_step jumps by 3."""

    def __init__(self):
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, _):
        opt = self.optimizers()
        for _ in range(3):
            opt.zero_grad()
            self.manual_backward(self.lin(batch[0]).pow(2).mean())
            opt.step()


def test_step_checkpoints_when_global_step_jumps(tmp_path):
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(40, 4)), 4)
    cfg = TrainerConfig(accelerator="cpu", checkpoint_every_n_steps=5, progress_bar=False)
    watch = _Watch(tmp_path / "checkpoints" / "last.ckpt")
    build_trainer(cfg, tmp_path, max_epochs=1, callbacks=[watch]).fit(_Multi(), loader)
    # steps go 3, 6, 9, ...: saved at the first step past each multiple of 5 (seen from
    # the next batch on, so the save at step 30 is not observed)
    assert sorted(set(watch.seen)) == [6, 12, 15, 21, 27]
