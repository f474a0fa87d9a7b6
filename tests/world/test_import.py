"""``visctr import``: a world from a shop's raw files (string SKUs, CSV logs, ISO times).

The round trip writes a simulated world out as raw files, imports them and checks that
the imported world holds the same tables and that ``visctr run --world`` on it gives
every metric that does not need the simulator's ground truth exactly as on the original.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from visctr.cli import main
from visctr.world import World

from .raw_files import BASE, write_raw


@pytest.fixture(scope="module")
def raw(tiny_world_dir, tmp_path_factory) -> dict:
    return write_raw(tiny_world_dir, tmp_path_factory.mktemp("raw") / "shop")


def _import(raw: dict, out: Path, *extra: str, **replace) -> object:
    files = {**{k: raw[k] for k in ("catalog", "queries", "impressions")}, **replace}
    args = ["import", *(a for k, v in files.items() if v is not None for a in (f"--{k}", str(v)))]
    return CliRunner().invoke(main, [*args, *extra, "--out", str(out)])


def _full(raw: dict, out: Path, *extra: str, **replace):
    return _import(
        raw, out, "--split-time", raw["split_time"], *extra,
        random=replace.pop("random", raw["random"]),
        retrieval=replace.pop("retrieval", raw["retrieval"]),
        **replace,
    )  # fmt: skip


def test_import_reproduces_the_simulated_tables(raw, tiny_world_dir, tmp_path):
    res = _full(raw, tmp_path / "w")
    assert res.exit_code == 0, res.output
    a, b = World.load(tiny_world_dir), World.load(tmp_path / "w")
    assert b.source == "imported" and not b.ground_truth and b.users_affinity is None
    assert b.has_random_exposure and b.has_retrieval_labels
    for c in ("item_id", "category", "image_row", "train_impressions", "is_head"):
        assert np.array_equal(a.items[c], b.items[c]), c
    assert b.items["item_key"][:2].tolist() == ["sku-000000", "sku-000001"]
    logged = a.queries["split"] != "retrieval"
    for c in ("query_id", "split", "image_row"):
        assert np.array_equal(a.queries[c], b.queries[c]), c
    assert np.array_equal(a.queries["user_id"][logged], b.queries["user_id"][logged])
    assert (b.queries["timestamp"][logged] - a.queries["timestamp"][logged] == BASE).all()
    ret = ~logged
    assert np.array_equal(a.queries["target_item_id"][ret], b.queries["target_item_id"][ret])
    assert (b.queries["target_item_id"][logged] == -1).all()
    assert np.array_equal(a.item_images, b.item_images)
    assert np.array_equal(a.query_images, b.query_images)
    for split in ("train", "test", "random"):
        x, y = a.read_impressions(split), b.read_impressions(split)
        for c in ("query_id", "user_id", "item_id", "position", "clicked"):
            assert np.array_equal(x[c], y[c]), (split, c)
        assert (y["timestamp"] - x["timestamp"] == BASE).all()
    assert b.user_keys[0] == "user-00000"
    assert "random-exposure set" in res.output and "retrieval 120" in res.output


def test_small_record_batches_give_the_same_world(raw, tmp_path):
    """The logs are streamed: batch boundaries must not change a byte of the tables."""
    from visctr.io import digest_files
    from visctr.world.importer import ImportConfig, import_world

    big = _full(raw, tmp_path / "big")
    assert big.exit_code == 0, big.output
    split = World.load(tmp_path / "big").meta["import"]["split_time"]
    cfg = ImportConfig(split_time=split, batch_rows=97)
    files = {k: raw[k] for k in ("catalog", "queries", "impressions", "random", "retrieval")}
    # CSV record batches are sized in bytes: write the logs as Parquet to get 97-row batches
    for k in ("impressions", "random"):
        pq.write_table(pa.csv.read_csv(files[k]), tmp_path / f"{k}.parquet", row_group_size=1000)
        files[k] = tmp_path / f"{k}.parquet"
    import_world(
        files["catalog"], files["queries"], files["impressions"], tmp_path / "small",
        files["random"], files["retrieval"], cfg, echo=lambda *_: None,
    )  # fmt: skip
    pats = ("*.parquet", "impressions/*.parquet", "images/*.npy")
    a, b = World.load(tmp_path / "big"), World.load(tmp_path / "small")
    for s in ("train", "test", "random"):
        x, y = a.read_impressions(s), b.read_impressions(s)
        assert all(np.array_equal(x[c], y[c]) for c in x), s
    assert digest_files(tmp_path / "big", pats[2:]) == digest_files(tmp_path / "small", pats[2:])
    assert np.array_equal(a.items["train_impressions"], b.items["train_impressions"])


def _rewrite(path: Path, out: Path, edit) -> Path:
    lines = path.read_text().splitlines()
    out.write_text("\n".join(edit(lines)) + "\n")
    return out


def _set(lines: list[str], row: int, col: int, value: str) -> list[str]:
    cells = lines[row + 1].split(",")
    cells[col] = value
    return [*lines[: row + 1], ",".join(cells), *lines[row + 2 :]]


def _with_propensity(lines: list[str]) -> list[str]:
    return [lines[0] + ",propensity", *(ln + ",0.25" for ln in lines[1:])]


def _epoch(iso_text: str, unit: str = "s") -> str:
    from datetime import datetime

    scale = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}[unit]
    return str(int(datetime.fromisoformat(iso_text.replace("Z", "+00:00")).timestamp()) * scale)


def _times_as(lines: list[str], unit: str) -> list[str]:
    """The queries file with its ISO times as epoch integers in ``unit``."""
    out = [lines[0]]
    for ln in lines[1:]:
        cells = ln.split(",")
        cells[3] = _epoch(cells[3], unit)
        out.append(",".join(cells))
    return out


def _shown_again(lines: list[str], row: int, position: str | None = None, other=False):
    """Row ``row`` of an impression log once more at the end: as it is, at another
    position, or (``other``) another item at the same position of the same query."""
    cells = lines[row + 1].split(",")
    if position is not None:
        cells[2] = position
    if other:
        shown = {ln.split(",")[1] for ln in lines[1:] if ln.split(",")[0] == cells[0]}
        cells[1] = next(f"sku-{i:06d}" for i in range(10**6) if f"sku-{i:06d}" not in shown)
    return [*lines, ",".join(cells)]


def _with_bid(lines: list[str], name: str = "bid") -> list[str]:
    """A catalog with a bid per item: 0.5, 1.0, ..., 2.5, 0.5, ... (row i: 0.5·(1 + i % 5))."""
    return [lines[0] + f",{name}", *(f"{ln},{0.5 * (1 + i % 5)}" for i, ln in enumerate(lines[1:]))]


@pytest.mark.parametrize(
    "which,edit,match",
    [
        ("impressions", lambda ls: [ls[0].replace("clicked", "click"), *ls[1:]],
         "impressions.csv: missing column 'clicked'"),
        ("impressions", lambda ls: _set(ls, 3, 1, "sku-999999"),
         "impressions.csv: row 3: item_id 'sku-999999' is not in the catalog"),
        ("impressions", lambda ls: _set(ls, 5, 0, "q-nope"),
         "impressions.csv: row 5: query_id 'q-nope' is not in the queries file"),
        ("impressions", lambda ls: _set(ls, 7, 3, "2"),
         "impressions.csv: row 7: clicked 2 is not 0 or 1"),
        ("impressions", lambda ls: _set(ls, 8, 3, "yes"),
         "impressions.csv: row 8: clicked 'yes' is not an integer"),
        ("impressions", lambda ls: _set(ls, 9, 2, "-1"),
         "impressions.csv: row 9: position -1 is not 0..2147483647"),
        ("queries", lambda ls: _set(ls, 4, 3, "next tuesday"),
         "queries.csv: row 4: timestamp 'next tuesday' is neither an epoch integer nor ISO-8601"),
        ("queries", lambda ls: _set(ls, 2, 1, ""),
         "queries.csv: row 2: column 'image_path' is empty (a query without an image)"),
        ("queries", lambda ls: _set(ls, 2, 1, "queries/missing.png"),
         "queries.csv: row 2: image file not found"),
        ("queries", lambda ls: _set(ls, 6, 0, "q-000001"),
         "queries.csv: row 6: duplicate query_id 'q-000001'"),
        ("catalog", lambda ls: _set(ls, 5, 0, "sku-000001"),
         "catalog.csv: row 5: duplicate item_id 'sku-000001'"),
        ("retrieval", lambda ls: _set(ls, 1, 2, "sku-nope"),
         "retrieval.csv: row 1: item_id 'sku-nope' is not in the catalog"),
        ("random", lambda ls: [*ls, "q-000000,sku-000001,0,0"],
         "is also in the random-exposure log"),
        ("impressions", lambda ls: _set(_with_propensity(ls), 4, 4, "0"),
         "impressions.csv: row 4: propensity 0.0 is not in (0, 1]"),
        ("impressions", lambda ls: _set(_with_propensity(ls), 6, 4, "1.5"),
         "impressions.csv: row 6: propensity 1.5 is not in (0, 1]"),
        ("impressions", lambda ls: _set(_with_propensity(ls), 2, 4, "inf"),
         "impressions.csv: row 2: propensity inf is not in (0, 1]"),
        ("impressions", lambda ls: _set(_with_propensity(ls), 3, 4, "high"),
         "impressions.csv: row 3: propensity 'high' is not a number"),
        # times: outside 1990..2100 once read, or of two magnitudes in one file
        ("queries", lambda ls: _set(ls, 4, 3, "1969-07-20T20:17:00Z"),
         "queries.csv: row 4: timestamp '1969-07-20T20:17:00Z' is 1969-07-20T20:17:00Z (read "
         "as ISO-8601), outside 1990..2100"),
        ("queries", lambda ls: _set(ls, 4, 3, "99999999999999999999999"),
         "queries.csv: row 4: timestamp '99999999999999999999999' is out of range for an "
         "epoch time"),
        ("queries", lambda ls: _set(ls, 4, 3, "86400"),
         "queries.csv: row 4: timestamp '86400' is 1970-01-02T00:00:00Z (read as epoch seconds "
         "from its magnitude), outside 1990..2100"),
        ("queries", lambda ls: _set(_times_as(ls, "s"), 6, 3, _epoch("2026-01-02T00:00:00Z", "ms")),
         "queries.csv: row 6: timestamp 1767312000000 looks like epoch milliseconds where the "
         "rows before are seconds"),
        # duplicates: a row twice, an item twice for one query, two items at one position
        ("impressions", lambda ls: _shown_again(ls, 4),
         "impressions.csv: 1 exact duplicate impression rows (same query_id, item_id, position "
         "and clicked; first: rows 4 and 8000); a log joined twice? drop them with --dedupe"),
        ("impressions", lambda ls: _shown_again(ls, 4, position="60"),
         "impressions.csv: 1 rows with the same item_id twice for one query (first: rows 4 and "
         "8000, query_id 'q-000000')"),
        ("impressions", lambda ls: _shown_again(ls, 4, other=True),
         "impressions.csv: 1 rows with two items at one position of one query (first: rows 4 "
         "and 8000, query_id 'q-000000')"),
        ("random", lambda ls: _shown_again(ls, 2),
         "random.csv: 1 exact duplicate impression rows"),
        ("catalog", lambda ls: _set(_with_bid(ls), 4, 3, "0"),
         "catalog.csv: row 4: column 'bid': 0.0 is not a finite number > 0"),
        ("catalog", lambda ls: _set(_with_bid(ls), 5, 3, "-2"),
         "catalog.csv: row 5: column 'bid': -2.0 is not a finite number > 0"),
        ("catalog", lambda ls: _set(_with_bid(ls), 6, 3, "nan"),  # text 'nan' is a value
         "catalog.csv: row 6: column 'bid': nan is not a finite number > 0"),
        ("catalog", lambda ls: _set(_with_bid(ls, "price"), 7, 3, "inf"),
         "catalog.csv: row 7: column 'price': inf is not a finite number > 0"),
        ("catalog", lambda ls: _set(_with_bid(ls), 8, 3, ""),
         "catalog.csv: row 8: column 'bid' is missing or NaN (every item needs a bid > 0)"),
        ("catalog", lambda ls: _set(_with_bid(ls, "price"), 9, 3, "cheap"),
         "catalog.csv: row 9: column 'price': 'cheap' is not a number"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_naming_file_row_and_column(raw, tmp_path, which, edit, match):
    """... and ``--check`` (the dry run) stops on the same line, after its screen."""
    src = Path(raw[which])
    bad = _rewrite(src, src.parent / f"bad_{src.name}", edit)  # beside it: same image paths
    try:
        res = _full(raw, tmp_path / "w", **{which: bad})
        dry = _full(raw, tmp_path / "w", "--check", **{which: bad})
    finally:
        bad.unlink()
    for r in (res, dry):
        assert r.exit_code == 2
        last = r.output.strip().splitlines()[-1]  # progress lines, then the one error line
        assert match in last, r.output
        assert "Traceback" not in r.output and r.output.count(match) == 1
    assert not (tmp_path / "w").exists()  # no half-written world
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".w.")]  # no temp left


def test_random_and_retrieval_are_optional_and_the_split_follows_the_share(raw, tmp_path):
    res = _import(raw, tmp_path / "w", "--train-share", "0.5")
    assert res.exit_code == 0, res.output
    w = World.load(tmp_path / "w")
    assert not w.has_random_exposure and not w.has_retrieval_labels
    assert "no random-exposure log" in res.output
    ts, split = w.queries["timestamp"], w.queries["split"]
    assert set(split) == {"train", "test"}
    assert abs((split == "train").mean() - 0.5) < 0.01
    assert ts[split == "train"].max() < ts[split == "test"].min()  # split by time


def test_without_labels_retrieval_targets_are_the_test_clicks(raw, tmp_path):
    from visctr.eval.retrieval import retrieval_targets

    assert _import(raw, tmp_path / "w").exit_code == 0
    w = World.load(tmp_path / "w")
    qids, targets = retrieval_targets(w)
    test = w.read_impressions("test")
    c = test["clicked"] == 1
    assert len(qids) == len(set(zip(test["query_id"][c], test["item_id"][c], strict=True)))
    assert set(zip(qids, targets, strict=True)) == set(
        zip(test["query_id"][c], test["item_id"][c], strict=True)
    )
    assert not np.isin(qids, w.queries["query_id"][w.queries["split"] == "train"]).any()


def test_integer_ids_and_parquet_inputs_keep_their_type(raw, tmp_path):
    """Parquet files with int64 ids and int timestamps: keys stay integers."""
    cat = pa.csv.read_csv(raw["catalog"])
    ids = pa.array([int(s[4:]) * 10 for s in cat["item_id"].to_pylist()], pa.int64())
    shop = Path(raw["catalog"]).parent
    pq.write_table(cat.set_column(0, "item_id", ids), shop / "catalog_int.parquet")
    imp = pa.csv.read_csv(raw["impressions"])
    iid = pa.array([int(s[4:]) * 10 for s in imp["item_id"].to_pylist()], pa.int64())
    pq.write_table(imp.set_column(1, "item_id", iid), tmp_path / "imp.parquet")
    q = pa.csv.read_csv(
        raw["queries"],
        convert_options=pa.csv.ConvertOptions(column_types={"timestamp": pa.string()}),
    )
    secs = pa.array(
        [
            int(np.datetime64(t.rstrip("Z"), "s").astype(np.int64))
            for t in q["timestamp"].to_pylist()
        ]
    )
    pq.write_table(q.set_column(3, "timestamp", secs), shop / "queries_int.parquet")
    res = _import(
        raw, tmp_path / "w", catalog=shop / "catalog_int.parquet",
        queries=shop / "queries_int.parquet", impressions=tmp_path / "imp.parquet",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    w = World.load(tmp_path / "w")
    assert w.items["item_key"].dtype.kind == "i" and w.items["item_key"][1] == 10
    assert w.items["train_impressions"].sum() > 0


def test_jpeg_query_photos_are_read(tiny_world_dir, tmp_path):
    raw = write_raw(tiny_world_dir, tmp_path / "shop", query_format="JPEG")
    res = _import(raw, tmp_path / "w", random=raw["random"])
    assert res.exit_code == 0, res.output
    a, b = World.load(tiny_world_dir), World.load(tmp_path / "w")
    logged = np.flatnonzero(a.queries["split"] != "retrieval")
    diff = np.abs(a.query_images[logged].astype(int) - b.query_images[logged].astype(int))
    assert diff.mean() < 6  # lossy, but the same photos


def test_out_checks_apply(raw, tmp_path):
    """--out is refused when it holds user files or is an input."""
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    res = _import(raw, tmp_path / "mine")
    assert res.exit_code != 0 and (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    res = _import(raw, Path(raw["catalog"]).parent)
    assert res.exit_code != 0 and Path(raw["catalog"]).is_file()


@pytest.mark.slow
def test_round_trip_run_matches_the_simulated_world(tiny_run, tmp_path):
    """The tiny run's world as raw files, imported, run again: every metric that needs no
    ground truth is the same; the A/B test and the by-category analysis are skipped.

    This is also the suite's determinism check from scratch: the second run, in a new
    directory on another world directory, trains every encoder and CTR model again (nothing
    is cached) and reproduces every metric of the first to the last digit."""
    run_a, _ = tiny_run
    raw = write_raw(run_a / "world" / "data", tmp_path / "shop")
    assert _full(raw, tmp_path / "world").exit_code == 0
    res = CliRunner().invoke(
        main,
        [
            "run",
            "--preset",
            "tiny",
            "--world",
            str(tmp_path / "world"),
            "--out",
            str(tmp_path / "run"),
        ],
    )
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert "cached" not in res.output and "up to date" not in res.output
    a = json.loads((run_a / "results.json").read_text())
    b = json.loads((tmp_path / "run" / "results.json").read_text())
    assert set(b["methods"]) == set(a["methods"])
    assert b["methods"] == a["methods"]  # exactly: the same floats, every metric
    # the selection-bias gap from the imported --retrieval labels: the same hits, the same Δ
    assert b["selection_bias"] and b["selection_bias"] == a["selection_bias"]
    assert b["ctr_head_tail"] and b["ctr_head_tail"] == a["ctr_head_tail"]  # random log too
    compared = 0
    for m, metrics in a["methods"].items():
        for k, v in metrics.items():
            x, y = v["per_seed"][0], b["methods"][m][k]["per_seed"][0]
            assert x is not None and y is not None and math.isclose(x, y, abs_tol=1e-6), (
                m,
                k,
                x,
                y,
            )
            compared += 1
    assert compared == len(a["methods"]) * len(next(iter(a["methods"].values())))
    assert b["world_source"] == "imported" and "ab_test" not in b
    assert set(b["skipped"]) == {"random_exposure_by_category", "ab_test"}
    assert "skipped ab_test:" in res.output and "results.json['ope']" in res.output
    # the A/B test's place: off-policy estimates from the imported random-exposure log,
    # for every method, each the same as on the simulated world it came from
    assert set(b["ope"]["dr_pi"]) == set(a["methods"])  # no legacy: no hidden popularity
    for e, by in b["ope"].items():
        for m, row in by.items():
            assert math.isclose(
                row["ctr"]["per_seed"][0], a["ope"][e][m]["ctr"]["per_seed"][0], abs_tol=1e-6
            ), (e, m)
    assert "ope_validation" not in b
    ab = CliRunner().invoke(main, ["abtest", "--run", str(tmp_path / "run")])
    assert (
        ab.exit_code != 0 and "the A/B test needs the simulator's hidden click model" in ab.output
    )
    # the user's ids travel with the embeddings
    emb = pq.read_table(tmp_path / "run" / "seed_0" / "embeddings" / "s2" / "items.parquet")
    assert emb.column("item_key")[0].as_py().startswith("sku-")
    shutil.rmtree(tmp_path / "shop")


@pytest.mark.slow
def test_without_a_random_log_the_ordinary_log_gives_the_estimates(raw, tmp_path):
    """A shop with logged propensities and no random bucket: the world keeps the column,
    and `visctr run` estimates every method's CTR from the ordinary log alone (dm_log,
    dr_log, dr_pi_log), weighting by the logged propensities, and says what it skipped."""
    src = Path(raw["impressions"])
    imp = _rewrite(src, src.parent / "imp_propensity.csv", _with_propensity)
    try:
        res = _import(
            raw, tmp_path / "world", "--split-time", raw["split_time"], impressions=imp,
            retrieval=raw["retrieval"],
        )  # fmt: skip
    finally:
        imp.unlink()
    assert res.exit_code == 0, res.output
    w = World.load(tmp_path / "world")
    assert not w.has_random_exposure
    for split in ("train", "test"):
        p = w.read_propensity(split)
        assert p is not None and p.size == len(w.read_impressions(split)["clicked"])
        assert np.all(p == 0.25)
    from visctr.pipeline.ope import Slates

    lg = Slates(w, "test", 10).logged
    assert np.all(lg.propensity[lg.mask] == 0.25)  # what the estimators weight by
    run = CliRunner().invoke(
        main,
        [
            "run",
            "--preset",
            "tiny",
            "--world",
            str(tmp_path / "world"),
            "--out",
            str(tmp_path / "r"),
        ],
    )
    assert run.exit_code == 0, run.output + repr(run.exception)
    r = json.loads((tmp_path / "r" / "results.json").read_text())
    assert set(r["ope"]) == {"dm_log", "dr_log", "dr_pi_log"}
    for e, by in r["ope"].items():
        assert set(by) == set(r["methods"]), e
        for row in by.values():
            assert row["ctr"]["per_seed"][0] is not None and row["ess"]["per_seed"][0] > 0
    info = r["ope_info"]
    assert "bucket" not in info and info["logs"]["propensity"] == "the log's propensity column"
    assert {"ope_bucket", "ab_test", "auc_random_exposure"} <= set(r["skipped"])
    assert "skipped ope_bucket:" in run.output and "ope" not in r["skipped"]
    assert "dr_pi_log" in (tmp_path / "r" / "report.md").read_text()


def test_uint64_ids_beyond_int64_are_kept_as_text_not_wrapped(raw, tmp_path):
    """A Parquet user_id column of uint64 values above 2**63: the world keeps them as the
    same decimal text (never a wrapped negative number)."""
    import pyarrow.csv as pacsv

    shop = Path(raw["queries"]).parent
    q = pacsv.read_csv(shop / "queries.csv", convert_options=pacsv.ConvertOptions(
        column_types={c: pa.string() for c in ("query_id", "image_path", "user_id", "timestamp")}
    ))  # fmt: skip
    users = q["user_id"].to_pylist()
    big = {u: 2**63 + 7 + i for i, u in enumerate(sorted(set(users)))}
    col = pa.array([big[u] for u in users], pa.uint64())
    pq.write_table(q.set_column(2, "user_id", col), shop / "queries_u64.parquet")
    try:
        res = _import(raw, tmp_path / "w", queries=shop / "queries_u64.parquet")
    finally:
        (shop / "queries_u64.parquet").unlink()
    assert res.exit_code == 0, res.output
    keys = pq.read_table(tmp_path / "w" / "users.parquet")["user_key"].to_pylist()
    assert sorted(keys) == sorted(str(v) for v in big.values())


@pytest.mark.parametrize(
    "pattern,key",
    [(r"\1", "000001"), (r"sku-\1 ", "sku-000001")],
    ids=["zero-padded", "trailing-space"],
)
def test_text_ids_match_themselves_across_files(raw, tmp_path, pattern, key):
    """Zero-padded numeric SKUs (``000123``) and SKUs with a trailing space, the same in
    every file, are one id each: text is never read as a number in one file and as text
    in another (surrounding whitespace is not part of an id)."""
    import csv
    import re

    shop = Path(raw["catalog"]).parent
    edited = {}
    for k in ("catalog", "impressions", "random", "retrieval"):
        with open(raw[k], newline="") as f:
            rows = list(csv.reader(f))
        col = rows[0].index("item_id")
        for r in rows[1:]:
            r[col] = re.sub(r"sku-(\d{6})", pattern, r[col])
        # image paths are relative to the file's folder: the copies stay beside them
        path = shop / f"{k}-{len(pattern)}.csv"
        with open(path, "w", newline="") as f:
            csv.writer(f).writerows(rows)
        edited[k] = path
    try:
        res = _full(raw, tmp_path / "w", **edited)
    finally:
        for path in edited.values():
            path.unlink()
    assert res.exit_code == 0, res.output
    w = World.load(tmp_path / "w")
    keys = w.items["item_key"]
    assert keys.dtype.kind in "OUS" and key in set(keys.tolist())
    assert w.items["train_impressions"].sum() > 0


@pytest.mark.parametrize("unit", ["ms", "us", "ns"])
def test_epoch_integers_of_any_unit_give_the_same_world(raw, tmp_path, unit):
    """Times in epoch ms/us/ns are read by their magnitude (one line says so) and give the
    world that ISO times give; ``--timestamp-unit`` says the same; the unit is recorded."""
    src = Path(raw["queries"])
    q = _rewrite(src, src.parent / f"queries_{unit}.csv", lambda ls: _times_as(ls, unit))
    try:
        auto = _import(raw, tmp_path / "auto", queries=q)
        given = _import(raw, tmp_path / "given", "--timestamp-unit", unit, queries=q)
        wrong = _import(raw, tmp_path / "wrong", "--timestamp-unit", "s", queries=q)
    finally:
        q.unlink()
    assert _import(raw, tmp_path / "iso").exit_code == 0
    assert auto.exit_code == 0 and given.exit_code == 0, auto.output + given.output
    name = {"ms": "milliseconds", "us": "microseconds", "ns": "nanoseconds"}[unit]
    assert f"timestamps read as epoch {name} (from their magnitude)" in auto.output
    assert f"timestamps read as epoch {name} (given)" in given.output
    iso = World.load(tmp_path / "iso")
    for d in ("auto", "given"):
        w = World.load(tmp_path / d)
        assert np.array_equal(w.queries["timestamp"], iso.queries["timestamp"])
        assert np.array_equal(w.queries["split"], iso.queries["split"])
        assert w.meta["import"]["timestamp_units"]["queries"] == unit
    assert iso.meta["import"]["timestamp_units"]["queries"] == "iso"
    assert wrong.exit_code == 2 and "(read as epoch seconds), outside 1990..2100" in wrong.output
    assert not (tmp_path / "wrong").exists()


def test_a_log_joined_twice_is_refused_or_deduplicated(raw, tmp_path):
    """Every impression row twice: refused with the count; with ``--dedupe``, dropped with
    one line, and the world is the one the log once gives (nothing counted twice)."""
    src = Path(raw["impressions"])
    twice = _rewrite(src, src.parent / "twice.csv", lambda ls: [*ls, *ls[1:]])
    try:
        refused = _full(raw, tmp_path / "r", impressions=twice)
        dedupe = _full(raw, tmp_path / "d", "--dedupe", impressions=twice)
    finally:
        twice.unlink()
    assert refused.exit_code == 2 and "8,000 exact duplicate impression rows" in refused.output
    assert not (tmp_path / "r").exists()
    assert dedupe.exit_code == 0, dedupe.output
    assert "twice.csv: dropped 8,000 exact duplicate rows (--dedupe)" in dedupe.output
    assert _full(raw, tmp_path / "once").exit_code == 0
    a, b = World.load(tmp_path / "once"), World.load(tmp_path / "d")
    for split in ("train", "test", "random"):
        x, y = a.read_impressions(split), b.read_impressions(split)
        assert all(np.array_equal(x[c], y[c]) for c in x), split
    assert np.array_equal(a.items["train_impressions"], b.items["train_impressions"])
    assert b.meta["import"]["exact_duplicates_dropped"] == {"random": 0, "impressions": 8000}


def test_check_is_a_dry_run_that_writes_nothing(raw, tmp_path):
    """``--check`` reads every file, prints one screen and writes nothing: not ``--out``,
    nothing beside the inputs, no temporary folder left."""
    shop = Path(raw["catalog"]).parent
    before = sorted(str(p) for p in shop.rglob("*"))
    res = _full(raw, tmp_path / "w", "--check")
    assert res.exit_code == 0, res.output
    assert not tmp_path.joinpath("w").exists() and not list(tmp_path.iterdir())
    assert sorted(str(p) for p in shop.rglob("*")) == before
    out = res.output
    for line in (
        "catalog: 300 items, 5 categories",
        "queries: 950 queries, 40 users, 120 labelled retrieval photos; times read as ISO-8601",
        "impressions: 8,000 rows, 800 queries, 300 items; times from the queries file",
        "random: 1,500 rows, 150 queries",
        "  CTR by position: 0:0.412 1:0.125",
        "  duplicates: 0 exact rows, 0 items shown twice for one query, 0 positions used twice",
        "queries without impressions: 0",
        "can measure: random-exposure AUC yes; OPE with estimated propensities (no propensity "
        "column); retrieval with labelled photos",
        "no problems found",
    ):
        assert line in out, (line, out)
    assert len(out.splitlines()) <= 24  # one screen
    # without --out, and without the optional files: it says what the world cannot measure
    res = CliRunner().invoke(main, [
        "import", "--catalog", str(raw["catalog"]), "--queries", str(raw["queries"]),
        "--impressions", str(raw["impressions"]), "--check",
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "random-exposure AUC no" in res.output and "queries without impressions: 150" in (
        res.output
    )
    assert "retrieval with test clicks as targets" in res.output
    res = CliRunner().invoke(
        main,
        [
            "import",
            "--catalog",
            str(raw["catalog"]),
            "--queries",
            str(raw["queries"]),
            "--impressions",
            str(raw["impressions"]),
        ],
    )
    assert res.exit_code == 2 and "--out" in res.output  # fmt: skip


@pytest.mark.parametrize("seed", range(6))
def test_duplicate_check_matches_a_brute_force_count(tmp_path, seed):
    """The duplicate check spills keys by query partition and checks each alone; its
    counts, first pairs and dropped rows equal a plain dictionary walk over the rows."""
    from visctr.world.importer import _LogStats

    rng = np.random.default_rng(seed)
    n = 3000
    q = rng.integers(0, 150, n)  # few queries, few items: every kind of duplicate occurs
    i = rng.integers(0, 40, n)
    pos = rng.integers(0, 12, n)
    clk = rng.integers(0, 2, n)
    st = _LogStats(Path("log.csv"), 40, 150, tmp_path / "spill")
    for s in range(0, n, 700):  # batches
        sl = slice(s, s + 700)
        st.add(np.arange(n)[sl], q[sl], i[sl], pos[sl], clk[sl])
    drop, counts, problems = st.duplicates(lambda k: f"q{k}", dedupe=True)
    assert not (tmp_path / "spill").exists()
    seen, dropped, rest = {}, [], []
    for r in range(n):
        key = (q[r], i[r], pos[r], clk[r])
        if key in seen:
            dropped.append(r)
        else:
            seen[key] = r
            rest.append(r)
    assert counts["exact"] == len(dropped) and drop.tolist() == dropped
    for kind, other in (("item", i), ("position", pos)):
        first, dups = {}, []
        for r in rest:
            key = (q[r], other[r])
            if key in first:
                dups.append((r, first[key]))
            else:
                first[key] = r
        assert counts[kind] == len(dups), kind
        b, a = min(dups)
        words = {"item": "item_id twice", "position": "one position"}[kind]
        line = next(p for p in problems if words in p)
        assert f"first: rows {a} and {b}, query_id 'q{q[b]}'" in line, (line, a, b)
    _, _, refused = _LogStats.duplicates(_restock(st, q, i, pos, clk, tmp_path), str, False)
    assert f"first: rows {seen[tuple(x[dropped[0]] for x in (q, i, pos, clk))]} and " in refused[0]


def _restock(st, q, i, pos, clk, tmp_path):
    from visctr.world.importer import _LogStats

    again = _LogStats(st.path, 40, 150, tmp_path / "spill2")
    again.add(np.arange(len(q)), q, i, pos, clk)
    return again


@pytest.mark.parametrize("name", ["bid", "price"])
def test_a_catalog_bid_reaches_the_off_policy_revenue_reward(raw, tmp_path, name):
    """The catalog's bid (or price) lands in items.bid and is the reward's factor: a policy
    that shows exactly the logged slates gets, from ips with propensity 1, the log's own
    Σ click × bid per mille impressions."""
    from types import SimpleNamespace

    from visctr.pipeline.ope import OPE, Slates

    src = Path(raw["catalog"])
    cat = _rewrite(src, src.parent / f"catalog_{name}.csv", lambda ls: _with_bid(ls, name))
    try:
        res = _full(raw, tmp_path / "w", catalog=cat)
    finally:
        cat.unlink()
    assert res.exit_code == 0, res.output
    w = World.load(tmp_path / "w")
    keys = [str(k) for k in w.items["item_key"]]
    lines = src.read_text().splitlines()[1:]
    want = {ln.split(",")[0]: 0.5 * (1 + i % 5) for i, ln in enumerate(lines)}
    assert w.items["bid"].dtype == np.float64
    assert [float(b) for b in w.items["bid"]] == [want[k] for k in keys]
    slates = Slates(w, "test", 10)
    lg = slates.logged
    est = OPE.__new__(OPE)
    est.bid = np.asarray(w.items["bid"], dtype=np.float64)
    est.cfg = SimpleNamespace(ope=SimpleNamespace(bootstrap=50))
    shown = np.where(lg.mask, lg.items, 0)  # the logged slates themselves
    zeros = np.zeros(lg.items.shape)
    out = {"ips_log": {"logged": {}}}
    est._revenue(out, slates, {"logged": shown}, None, zeros, {"logged": zeros}, 0, ("ips",))
    clicked_bids = (lg.clicks * lg.mask * est.bid[shown]).sum()
    assert clicked_bids > 0
    want_rpm = 1000 * clicked_bids / shown.size
    assert out["ips_log"]["logged"]["rpm"] == pytest.approx(want_rpm)
    assert (
        out["ips_log"]["logged"]["rpm_ci_low"]
        <= want_rpm
        <= out["ips_log"]["logged"]["rpm_ci_high"]
    )
