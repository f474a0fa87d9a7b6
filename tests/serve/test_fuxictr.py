"""``visctr export --format fuxictr``: FuxiCTR's own loader reads the files, and its
pretrained-embedding layer maps every string key to visctr's vector."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from visctr.cli import main
from visctr.embeddings import read_embeddings, write_embeddings
from visctr.serve.fuxictr import export_fuxictr


@pytest.fixture()
def emb_dir(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "emb"
    d.mkdir()
    items = rng.normal(size=(50, 6)).astype(np.float32)
    queries = rng.normal(size=(20, 6)).astype(np.float32)
    # small row groups: the conversion streams across several
    write_embeddings(np.arange(100, 150), items, d / "items.parquet", "item_id", row_group=16)
    write_embeddings(np.arange(20), queries, d / "queries.parquet", "query_id", row_group=16)
    return d


def _with_item_key(emb_dir, keys=None):
    """items.parquet with the user's own ids in ``item_key``, as ``visctr embed`` writes it
    for an imported world."""
    ids, vec = read_embeddings(emb_dir / "items.parquet")
    keys = [f"sku-{i:06d}" for i in ids] if keys is None else keys
    write_embeddings(ids, vec, emb_dir / "items.parquet", "item_id", row_group=16, keys=keys)
    return keys


def test_integer_user_keys_become_strings(emb_dir, tmp_path):
    """An imported world with integer ids has an int64 ``item_key``: the keys are its
    values as strings, not the internal row ids."""
    _with_item_key(emb_dir, np.arange(50, dtype=np.int64) * 7 + 1000)
    export_fuxictr(emb_dir, tmp_path / "fx")
    got = pq.read_table(tmp_path / "fx" / "item_emb.parquet").column("key").to_pylist()
    assert got == [str(7 * i + 1000) for i in range(50)]


def test_keys_are_the_users_ids_and_values_the_vectors(emb_dir, tmp_path):
    keys = _with_item_key(emb_dir)
    out = tmp_path / "fx"
    res = CliRunner().invoke(
        main, ["export", "--format", "fuxictr", "--embeddings", str(emb_dir), "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert "item_emb.parquet: 50 keys, pretrain_dim 6" in res.output
    ids, vec = read_embeddings(emb_dir / "items.parquet")
    got = pq.read_table(out / "item_emb.parquet")
    assert got.schema.field("value").type == pa.list_(pa.float32(), 6)  # fixed size
    assert got.column("key").to_pylist() == keys
    np.testing.assert_array_equal(np.stack(got.column("value").to_numpy(zero_copy_only=False)), vec)
    # no item_key column (simulated worlds): the int id as a string
    q = pq.read_table(out / "query_emb.parquet")
    assert q.column("key").to_pylist() == [str(i) for i in range(20)]


def test_fuxictr_loader_and_pretrained_embedding_read_the_export(emb_dir, tmp_path):
    """FuxiCTR 2.3's ``load_pretrain_emb``, its FeatureProcessor (vocabulary from the keys,
    feature declared ``dtype: str``) and its ``PretrainedEmbedding`` layer."""
    pytest.importorskip("fuxictr")
    pl = pytest.importorskip("polars")
    torch = pytest.importorskip("torch")
    from fuxictr.preprocess import FeatureProcessor
    from fuxictr.preprocess.tokenizer import load_pretrain_emb
    from fuxictr.pytorch.layers import PretrainedEmbedding

    keys = _with_item_key(emb_dir)
    export_fuxictr(emb_dir, tmp_path / "fx")
    path = str(tmp_path / "fx" / "item_emb.parquet")
    k, v = load_pretrain_emb(path, keys=["key", "value"])
    _, want = read_embeddings(emb_dir / "items.parquet")
    print(f"fuxictr load_pretrain_emb: keys {k.shape} {k[:2]}, values {v.dtype} {v.shape}")
    assert list(k) == keys and v.dtype == np.float32 and v.shape == (50, 6)
    np.testing.assert_array_equal(v, want)

    # the feature config of docs/serving.md, on a log that shows a few of the items
    col = {"name": "item_id", "active": True, "dtype": "str", "type": "categorical",
           "pretrained_emb": path, "pretrain_dim": 6, "freeze_emb": True,
           "pretrain_usage": "init"}  # fmt: skip
    # a second feature: FuxiCTR's vocabulary reader takes its key type from the second one
    user = {"name": "user_id", "active": True, "dtype": "str", "type": "categorical"}
    label = {"name": "clicked", "dtype": "float"}
    fp = FeatureProcessor([col, user], label, dataset_id="d", data_root=str(tmp_path / "fuxi"))
    log = pl.DataFrame(
        {"item_id": keys[:5] * 2, "user_id": ["u1", "u2"] * 5, "clicked": [0.0, 1.0] * 5}
    )
    fp.fit(log.lazy(), min_categr_count=1)
    spec = fp.feature_map.features["item_id"]
    layer = PretrainedEmbedding(
        "item_id",
        spec,
        f"{fp.data_dir}/{spec['pretrained_emb']}",
        fp.vocab_file,
        embedding_dim=6,
        pretrain_dim=6,
        pretrain_usage="init",
    )
    vocab = json.loads(open(fp.vocab_file).read())["item_id"]
    assert set(keys) <= set(vocab)  # items the log never showed are in the vocabulary too
    rows = torch.tensor([vocab[key] for key in keys])
    got = layer.pretrain_embedding(rows).detach().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_bad_embeddings_are_one_line_and_write_nothing(emb_dir, tmp_path):
    ids, vec = read_embeddings(emb_dir / "items.parquet")
    vec[37, 2] = np.nan
    write_embeddings(ids, vec, emb_dir / "items.parquet", row_group=16)
    out = tmp_path / "fx"
    res = CliRunner().invoke(
        main, ["export", "--format", "fuxictr", "--embeddings", str(emb_dir), "--out", str(out)]
    )
    assert res.exit_code == 2
    assert res.output.strip().splitlines()[-1].endswith("row 37: 'vector' has NaN or inf")
    assert not out.exists()


def test_duplicate_user_keys_are_refused(emb_dir, tmp_path):
    table = pq.read_table(emb_dir / "items.parquet")
    keys = [f"k{i}" for i in range(50)]
    keys[40] = "k3"
    pq.write_table(table.append_column("item_key", pa.array(keys)), emb_dir / "items.parquet")
    with pytest.raises(Exception, match=r"row 40: key 'k3' appears more than once"):
        export_fuxictr(emb_dir, tmp_path / "fx")
    assert not (tmp_path / "fx").exists()


def test_format_options_are_checked(emb_dir, tmp_path):
    res = CliRunner().invoke(
        main,
        [
            "export",
            "--format",
            "fuxictr",
            "--embeddings",
            str(emb_dir),
            "--encoder",
            "x.pt",
            "--out",
            str(tmp_path / "o"),
        ],  # fmt: skip
    )
    assert res.exit_code == 2 and "--encoder is for --format serving" in res.output
    res = CliRunner().invoke(
        main, ["export", "--embeddings", str(emb_dir), "--out", str(tmp_path / "o")]
    )
    assert res.exit_code == 2 and "--format serving needs --encoder" in res.output
