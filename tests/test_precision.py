"""Precision: what ``auto`` resolves to per device and stage (bf16/fp16 for the encoder
stages on CUDA, fp32 on CPU unless asked); losses compute in fp32 under autocast."""

from __future__ import annotations

import pytest
import torch

from visctr.losses import info_nce_loss, simsiam_loss
from visctr.precision import cpu_supports_bf16, fp32, resolve_precision


@pytest.mark.precision
def test_auto_on_cpu_is_fp32_unless_bf16_is_asked_for(monkeypatch):
    """On a CPU, auto trains in fp32 whatever the CPU has (native bf16 measured slower);
    VISCTR_CPU_BF16=1 opts the encoder stages in; CTR and embed stay fp32."""
    monkeypatch.delenv("VISCTR_CPU_BF16", raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert cpu_supports_bf16()  # a native-bf16 CPU ...
    assert resolve_precision("auto", "cpu", bf16_ok=True) == "32-true"  # ... trains in fp32
    monkeypatch.setenv("VISCTR_CPU_BF16", "1")
    assert resolve_precision("auto", "cpu", bf16_ok=True) == "bf16-mixed"
    assert resolve_precision("auto", "cpu", bf16_ok=False) == "32-true"  # CTR, embed: fp32
    assert resolve_precision("32", "cpu", bf16_ok=True) == "32-true"  # --precision 32 forces
    assert resolve_precision("auto", "mps", bf16_ok=True) == "32-true"
    monkeypatch.setenv("VISCTR_CPU_BF16", "0")
    assert resolve_precision("auto", "cpu", bf16_ok=True) == "32-true"
    assert resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"  # asked for: honoured
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("bf17", "cpu")


@pytest.mark.parametrize("accelerator", ["gpu", "cuda", "auto"])
def test_auto_on_cuda_is_bf16_where_the_gpu_has_it_else_fp16(monkeypatch, accelerator):
    """The device facts are mocked: this machine has no GPU."""
    monkeypatch.delenv("VISCTR_CPU_BF16", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", accelerator, bf16_ok=True) == "bf16-mixed"
    assert resolve_precision("auto", accelerator, bf16_ok=False) == "32-true"  # CTR, embed
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # V100, T4
    assert resolve_precision("auto", accelerator, bf16_ok=True) == "16-mixed"
    assert resolve_precision("32", accelerator, bf16_ok=True) == "32-true"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_precision("auto", "auto", bf16_ok=True) == "32-true"  # auto: the CPU


def test_detection_asks_torch_then_cpuinfo(monkeypatch, tmp_path):
    import builtins

    monkeypatch.delenv("VISCTR_CPU_BF16", raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert cpu_supports_bf16()
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    real_open = builtins.open
    for flags, want in (("fpu avx2 avx512_bf16", True), ("fpu avx avx2", False)):
        info = tmp_path / "cpuinfo"
        info.write_text(f"processor : 0\nflags : {flags}\n")

        def fake_open(f, *a, _info=info, **k):
            return real_open(_info if f == "/proc/cpuinfo" else f, *a, **k)

        monkeypatch.setattr(builtins, "open", fake_open)
        assert cpu_supports_bf16() is want


def test_losses_compute_in_fp32_under_autocast():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(32, 16, generator=g), torch.randn(32, 16, generator=g)
    ref = info_nce_loss(a, b, 0.2, gather=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = info_nce_loss(a.bfloat16(), b.bfloat16(), 0.2, gather=False)
    assert got.dtype == torch.float32
    # inputs rounded to bf16, the loss itself in fp32: close to the fp32 loss
    assert got.item() == pytest.approx(ref.item(), rel=2e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s = simsiam_loss(a.bfloat16(), b.bfloat16(), b.bfloat16(), a.bfloat16())
    assert s.dtype == torch.float32

    @fp32
    def inner(x):
        return torch.is_autocast_enabled("cpu"), x.dtype

    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert inner(a.bfloat16()) == (False, torch.float32)
    assert inner(a.double())[1] == torch.float64  # fp64 is left alone


@pytest.mark.precision
def test_embed_under_bf16_stays_close_to_fp32():
    import numpy as np

    from visctr.encoders.backbones import Encoder, build_backbone
    from visctr.encoders.export import embed_images

    torch.manual_seed(0)
    enc = Encoder(build_backbone("convnet", 1, 28, width=4, stages=1, blocks=1), 8).eval()
    imgs = np.random.default_rng(0).integers(0, 255, (16, 1, 28, 28), dtype=np.uint8)
    rows = np.arange(16)
    a = next(embed_images(enc, imgs, rows, 8, torch.device("cpu"), bf16=False))
    b = next(embed_images(enc, imgs, rows, 8, torch.device("cpu"), bf16=True))
    assert b.dtype == np.float32 and np.allclose(np.linalg.norm(b, axis=1), 1, atol=1e-5)
    assert (a * b).sum(1).min() > 0.99  # cosine to the fp32 vector
    assert not np.array_equal(a, b)  # bf16 really ran


def test_cuda_defaults_turn_tf32_on_only_on_a_gpu(monkeypatch):
    from visctr.precision import cuda_defaults, on_cuda

    before = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    try:
        torch.set_float32_matmul_precision("highest")
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        assert not on_cuda("auto") and not cuda_defaults("auto")
        assert torch.get_float32_matmul_precision() == "highest"
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        assert not cuda_defaults("cpu")  # asked for the CPU on a GPU machine
        assert torch.get_float32_matmul_precision() == "highest"
        assert on_cuda("gpu") and cuda_defaults("auto")
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(before[0])
        torch.backends.cudnn.allow_tf32 = before[1]


def test_encoder_loaders_pin_memory_when_asked():
    from visctr.encoders.data import make_loader

    data = list(range(8))
    assert make_loader(data, 4, 0, pin_memory=True).pin_memory
    assert not make_loader(data, 4, 0).pin_memory


def test_search_moves_the_exact_index_to_the_gpus_faiss_sees(monkeypatch):
    """With faiss-gpu (mocked: the CPU build plus a GPU count and a mover), the flat index
    goes to the GPUs and the answer is the same exact search; VISCTR_FAISS_GPU=0 opts out."""
    import faiss
    import numpy as np

    from visctr.eval.retrieval import search

    rng = np.random.default_rng(0)
    q, items = rng.normal(size=(5, 8)), rng.normal(size=(40, 8))
    want = search(q, items, 3)
    moved = []
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 2, raising=False)
    monkeypatch.setattr(
        faiss, "index_cpu_to_all_gpus", lambda idx: moved.append(idx) or idx, raising=False
    )
    got = search(q, items, 3)
    assert len(moved) == 1 and np.array_equal(got[1], want[1])
    monkeypatch.setenv("VISCTR_FAISS_GPU", "0")
    search(q, items, 3)
    assert len(moved) == 1
