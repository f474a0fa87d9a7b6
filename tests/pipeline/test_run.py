"""End to end on the tiny preset: schema of results.json, the report's plots, and reuse."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from click.testing import CliRunner

from visctr.cli import main
from visctr.pipeline.methods import METHODS, encoder_order
from visctr.pipeline.results import BY_CATEGORY, METRICS

pytestmark = pytest.mark.slow


def test_results_json_schema(tiny_run):
    out, _ = tiny_run
    r = json.loads((out / "results.json").read_text())
    assert r["preset"] == "tiny" and r["seeds"] == 1
    assert set(r["methods"]) == set(METHODS)
    for m in METHODS:
        assert set(r["methods"][m]) == set(METRICS)
        for k in METRICS:
            e = r["methods"][m][k]
            assert set(e) == {"mean", "std", "per_seed"}
            assert len(e["per_seed"]) == 1
            if k.startswith(("hr@", "longtail", "head", "category")):
                assert all(0 <= v <= 1 for v in e["per_seed"]), (m, k, e)
            if k == "auc":
                assert all(0 <= v <= 1 for v in e["per_seed"]), (m, k, e)
    assert r["timings_s"]["total"] > 0
    assert (out / "config.yaml").is_file()
    by_cat = r["random_exposure_by_category"]
    assert set(by_cat) == set(METHODS)
    for m in METHODS:
        assert set(by_cat[m]) == set(BY_CATEGORY)
        for k in BY_CATEGORY:
            v = by_cat[m][k]["per_seed"][0]
            assert v is None or 0 <= v <= 1, (m, k, v)  # None: a subset with one class
        assert 0 < by_cat[m]["random_same_category_share"]["per_seed"][0] < 1
    sb = r["selection_bias"]  # every space but S1's, against S1 on the retrieval queries
    assert set(sb) == {"ResNet-C", "S2", "S1+S2", "S1+S2+H", "S1+S2+D"}
    for name, e in sb.items():
        d = e["delta"]["per_seed"][0]
        lo, hi = e["ci95_per_seed"][0]
        assert lo <= d <= hi and e["n_queries"] == 400, (name, e)
        gap = e["head_hr"]["per_seed"][0] - e["tail_hr"]["per_seed"][0]
        ref = e["head_hr_ref"]["per_seed"][0] - e["tail_hr_ref"]["per_seed"][0]
        assert d == pytest.approx(gap - ref)
        # the same head/tail HR@10 as the methods' table (the same queries and ranks)
        assert e["head_hr"]["per_seed"] == pytest.approx(
            r["methods"][name]["head_hr@10"]["per_seed"]
        )
        assert e["tail_hr_ref"]["per_seed"] == pytest.approx(
            r["methods"]["S1"]["longtail_hr@10"]["per_seed"]
        )
        assert e["representation_bias"] in r["representation_bias"]
    assert "### Selection-bias gap" in (out / "report.md").read_text()
    assert (out / "plots" / "selection_bias.png").stat().st_size > 1000


def test_ctr_head_tail_table(tiny_run):
    import torch

    from visctr.ctr import predict_ctr
    from visctr.metrics import auc
    from visctr.pipeline.bias import ITEM_ID, ITEM_ID_SLUG
    from visctr.world import World

    out, _ = tiny_run
    r = json.loads((out / "results.json").read_text())
    t = r["ctr_head_tail"]
    assert set(t) == {*METHODS, ITEM_ID}
    ref_gap = t["S1+S2"]["gap"]["per_seed"][0]
    assert t["S1+S2"]["gap_delta"]["per_seed"] == [0.0]
    for name, e in t.items():
        head, tail = e["auc_head"]["per_seed"][0], e["auc_tail"]["per_seed"][0]
        assert 0 <= head <= 1 and 0 <= tail <= 1, name
        assert e["gap"]["per_seed"][0] == pytest.approx(head - tail)
        assert e["gap_delta"]["per_seed"][0] == pytest.approx(head - tail - ref_gap)
        assert e["calibration_head"]["per_seed"][0] > 0 and e["calibration_tail"]["per_seed"][0] > 0
        assert e["n_head"] + e["n_tail"] == 4000  # tiny: 400 random-exposure queries × 10
    # the table's S2 figures from S2's own random-exposure predictions, split by hand
    world = World.load(out / "world" / "data")
    pred = predict_ctr(out / "seed_0" / "ctr" / "s2", world, out / "seed_0" / "embeddings" / "s2",
                       "random")  # fmt: skip
    head_ids = world.items["item_id"][world.items["is_head"]]
    h = np.isin(pred["item_id"], head_ids)
    assert t["S2"]["auc_head"]["per_seed"][0] == pytest.approx(
        auc(pred["labels"][h], pred["probs"][h])
    )
    assert t["S2"]["auc_tail"]["per_seed"][0] == pytest.approx(
        auc(pred["labels"][~h], pred["probs"][~h])
    )
    # the item-id model is S1+S2's CTR model with item-id features
    blob = torch.load(out / "seed_0" / "ctr" / ITEM_ID_SLUG / "model.pt", weights_only=True)
    assert blob["config"]["use_item_id"] is True
    assert "### The CTR side of the bias" in (out / "report.md").read_text()


def test_ab_test_section(tiny_run):
    out, _ = tiny_run
    r = json.loads((out / "results.json").read_text())
    ab = r["ab_test"]
    assert ab["traffic_queries"] == 500 and ab["top_k"] == 10
    assert set(ab["methods"]) == {*METHODS, "legacy", "oracle"}
    oracle = ab["methods"]["oracle"]["ctr"]["per_seed"][0]
    for name, row in ab["methods"].items():
        ctr = row["ctr"]["per_seed"][0]
        assert 0 < ctr <= oracle + 1e-12, name  # the oracle maximises expected clicks
        assert 0 <= row["tail_exposure_share"]["per_seed"][0] <= 1
        assert 0 < row["coverage"]["per_seed"][0] <= 1 and 0 <= row["gini"]["per_seed"][0] < 1
        if name != "S2":
            lo, hi = row["lift_vs_S2"]["ci_per_seed"][0]
            assert lo <= row["lift_vs_S2"]["per_seed"][0] <= hi
            lo, hi = row["rpm_lift_vs_S2"]["ci_per_seed"][0]  # the world has bids: revenue
            assert lo <= row["rpm_lift_vs_S2"]["per_seed"][0] <= hi
        assert row["rpm"]["per_seed"][0] > 0
    assert ab["rank_by"] == "ctr"  # the default: bids price the clicks, rank by pCTR
    assert {c["metric"] for c in r["comparisons"]} >= {"ab_ctr", "ab_rpm"}
    report = (out / "report.md").read_text()
    assert "## Simulated A/B test" in report and "### Revenue (ranked by ctr)" in report


def test_ope_section(tiny_run, tmp_path):
    """Every estimator for every method and the logging policy, each CTR inside its CI for
    the bootstrap-based estimators, a validation against the A/B CTR, and `visctr abtest
    --estimator` on the finished run giving the same figures."""
    import shutil

    import pyarrow.parquet as pq

    from visctr.pipeline.ope import ESTIMATOR_NAMES

    out, _ = tiny_run
    r = json.loads((out / "results.json").read_text())
    assert set(r["ope"]) == set(ESTIMATOR_NAMES)
    for e, by in r["ope"].items():
        assert set(by) == {*METHODS, "legacy"}, e
        for name, row in by.items():
            ctr = row["ctr"]["per_seed"][0]
            lo, hi = row["ci95"][0]
            assert ctr is not None and lo is not None and lo <= hi, (e, name)
            if e in ("ips", "snips", "pi", "dm", "dm_log"):  # non-negative by construction
                assert ctr >= 0 and lo >= 0, (e, name)
            assert row["ess"]["per_seed"][0] > 0
            assert ("lift_vs_S2" in row) == (name != "S2")
            rpm, (lo, hi) = row["rpm"]["per_seed"][0], row["rpm_ci95"][0]
            assert rpm is not None and lo is not None and lo <= hi, (e, name)
            assert ("rpm_lift_vs_S2" in row) == (name != "S2")
    info = r["ope_info"]
    assert info["bucket"]["queries"] == 400 and info["top_k"] == 10
    test_log = pq.read_table(out / "world" / "data" / "impressions" / "test.parquet")
    test_queries = len(set(test_log["query_id"].to_pylist()))
    assert (
        info["logs"]["queries"] == test_queries
        and "1 per logged slot" in info["logs"]["propensity"]
    )
    # the other choice for a log without a propensity column: the position x exposure estimate
    from visctr.eval.ope import exposure_propensity
    from visctr.pipeline.ope import Slates
    from visctr.world import World

    world = World.load(out / "world" / "data")
    ones = Slates(world, "test", 10).logged
    assert np.all(ones.propensity == 1.0)
    exp = Slates(world, "test", 10, log_propensity="exposure").logged
    assert np.array_equal(exp.propensity, exposure_propensity(ones))
    assert exp.propensity[exp.mask].max() < 0.5
    theta = info["bucket"]["examination"]
    assert theta[0] == 1.0 and theta == sorted(theta, reverse=True)
    v = r["ope_validation"]
    assert set(v) == set(ESTIMATOR_NAMES)
    for row in v.values():
        assert row["n"] == len(METHODS) + 1 and 0 <= row["coverage"] <= 1
    assert set(r["ope_validation_rpm"]) == set(ESTIMATOR_NAMES)  # RPM beside CTR
    assert "## Off-policy estimates" in (out / "report.md").read_text()
    run = tmp_path / "run"
    shutil.copytree(out, run)
    res = CliRunner().invoke(main, ["abtest", "--run", str(run), "--estimator", "pi"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    again = json.loads((run / "ope.json").read_text())
    assert again["ope"]["pi"]["S1+S2"]["ctr"] == r["ope"]["pi"]["S1+S2"]["ctr"]
    assert "coverage" in res.output and "ctr (pi)" in res.output
    from visctr.pipeline.cli import OPE_ESTIMATORS

    assert OPE_ESTIMATORS == ESTIMATOR_NAMES  # --estimator offers every estimator there is


def test_report_links_existing_pngs(tiny_run):
    out, _ = tiny_run
    report = (out / "report.md").read_text()
    links = re.findall(r"\]\(([^)]+\.png)\)", report)
    assert len(links) >= 5
    for link in links:
        p = out / link
        assert p.is_file() and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", link
    for m in METHODS:
        assert m in report
    assert "### Random exposure by category" in report


def test_rerun_reuses_every_stage_and_matches(tiny_run):
    out, _ = tiny_run
    before = json.loads((out / "results.json").read_text())
    res = CliRunner().invoke(main, ["run", "--preset", "tiny", "--seeds", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "done in" not in res.output  # nothing recomputed
    # world, encoders, embeddings, CTR, and the item-id CTR model of the head/tail table
    n_stages = 1 + 2 * len(encoder_order()) + len(METHODS) + 1
    assert res.output.count("cached") == n_stages
    after = json.loads((out / "results.json").read_text())
    assert after["methods"] == before["methods"]
    assert after["ctr_head_tail"] == before["ctr_head_tail"]


def test_edited_outputs_are_recomputed_not_reported(tiny_run):
    """An embeddings file replaced after its stage finished is detected by its digest and
    re-embedded; the re-embed's output is identical, so the CTR model is not retrained."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out, _ = tiny_run
    before = json.loads((out / "results.json").read_text())
    items = out / "seed_0" / "embeddings" / "s2" / "items.parquet"
    table = pq.read_table(items)
    pq.write_table(pa.table({"item_id": table["item_id"], "vector": table["vector"][::-1]}), items)
    res = CliRunner().invoke(main, ["run", "--preset", "tiny", "--seeds", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "embed s2: outputs changed" in res.output
    assert "embed s2: done in" in res.output
    assert "ctr s2: cached" in res.output
    after = json.loads((out / "results.json").read_text())
    assert after["methods"] == before["methods"]


def test_string_sku_manifest_runs_end_to_end(tmp_path):
    """A shop's manifest with string SKUs (``sku-0001``) through ``visctr run --catalog``:
    every method is trained and evaluated, and the embeddings carry the SKUs."""
    import csv

    import pyarrow.parquet as pq
    from PIL import Image

    from ..conftest import synthetic_catalog

    cat = synthetic_catalog(n=200)
    shop = tmp_path / "shop"
    (shop / "img").mkdir(parents=True)
    with open(shop / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["item_id", "image_path", "category"])
        for i in range(len(cat)):
            Image.fromarray(cat.images[i, 0]).save(shop / "img" / f"{i}.png")
            w.writerow([f"sku-{i:04d}", f"img/{i}.png", cat.category_names[cat.categories[i]]])
    (tmp_path / "small.yaml").write_text(
        "world: {n_users: 30, n_queries: 500, n_random_queries: 80, n_retrieval_queries: 60,\n"
        "  extra_retrieval_queries: 0}\n"
        "abtest: {queries: 100}\n"
    )
    out = tmp_path / "run"
    res = CliRunner().invoke(
        main,
        ["run", "--preset", "tiny", "--catalog", str(shop / "manifest.csv"),
         "--config", str(tmp_path / "small.yaml"), "--out", str(out)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output + repr(res.exception)
    r = json.loads((out / "results.json").read_text())
    assert set(r["methods"]) == set(METHODS) and r["world"]["items"] == 200
    for m in METHODS:
        assert 0 <= r["methods"][m]["hr@10"]["per_seed"][0] <= 1
    items = pq.read_table(out / "world" / "data" / "items.parquet")
    assert items.column("item_key").to_pylist()[:2] == ["sku-0000", "sku-0001"]
    emb = pq.read_table(out / "seed_0" / "embeddings" / "s1" / "items.parquet")
    assert emb.column("item_key").to_pylist() == items.column("item_key").to_pylist()


def test_ope_check_script_prints_a_validation_table_per_bucket_size(tiny_run, tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[2] / "scripts" / "ope_check.py"
    spec = importlib.util.spec_from_file_location("ope_check", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out, _ = tiny_run
    assert mod.main([str(out), "--queries", "50", "200", "--out", str(tmp_path / "t.json")]) == 0
    table = json.loads((tmp_path / "t.json").read_text())
    assert set(table) == {"50", "200", "50_rpm", "200_rpm"}  # the world has bids: RPM too
    for v in table.values():
        assert {"dr_pi", "dm_log", "dr_log"} <= set(v) and all(r["n"] > 0 for r in v.values())
    assert "bucket of 200 queries" in capsys.readouterr().out


def test_a_log_without_clicks_is_skipped_and_a_bad_propensity_is_an_error(tiny_run, tmp_path):
    """An ordinary log with no click leaves the bucket's estimators (and says why); a
    world with neither log to estimate from is an EmptyLog (run skips the OPE); a
    propensity column out of (0, 1] in a world file is one line naming the file and row."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    from visctr.pipeline.config import RunConfig
    from visctr.pipeline.ope import OPE, EmptyLog
    from visctr.world import World

    out, _ = tiny_run
    cfg = RunConfig()
    world_dir = tmp_path / "w"
    shutil.copytree(out / "world" / "data", world_dir)
    test = world_dir / "impressions" / "test.parquet"
    t = pq.read_table(test)
    no_clicks = t.set_column(
        t.schema.get_field_index("clicked"), "clicked", pa.array(np.zeros(t.num_rows, np.int8))
    )
    pq.write_table(no_clicks, test)
    est = OPE(World.load(world_dir), cfg)
    assert set(est.sources) == {"bucket"} and "no click" in est.info()["logs"]["skipped"]
    (world_dir / "impressions" / "random.parquet").unlink()
    with pytest.raises(EmptyLog, match="test.parquet: the log has no click"):
        OPE(World.load(world_dir), cfg)
    p = np.full(t.num_rows, 0.5)
    p[3] = 1.5
    pq.write_table(t.append_column("propensity", pa.array(p)), test)
    res = CliRunner().invoke(main, ["abtest", "--run", str(shutil.copytree(out, tmp_path / "r")),
                                    "--world", str(world_dir), "--estimator", "dr_log"])  # fmt: skip
    assert res.exit_code == 2, res.output  # bad input
    assert (
        res.output.strip()
        .splitlines()[-1]
        .endswith("test.parquet: row 3: propensity 1.5 is not in (0, 1] (1 such rows)")
    ), res.output


def test_abtest_says_which_inputs_changed_since_the_run(tiny_run, tmp_path):
    """results.json records the digests of the world, every CTR model and embeddings
    folder; a CTR model replaced afterwards is named by `visctr abtest` (which recomputes),
    recorded in abtest.json, and the OPE validation no longer takes the run's stale A/B
    figures as the truth but the fresh ones. A model trained on another encoder's
    embeddings swapped in is refused, naming both files."""
    import shutil

    out, _ = tiny_run
    r = json.loads((out / "results.json").read_text())
    prov = r["provenance"]
    assert len(prov["world"]) == 32
    assert set(prov["models"]) == {f"seed_0/{m.slug}" for m in METHODS.values()}
    assert set(prov["embeddings"]) == {f"seed_0/{m.encoder}" for m in METHODS.values()}
    run = shutil.copytree(out, tmp_path / "run")
    res = CliRunner().invoke(main, ["abtest", "--run", str(run)])
    assert res.exit_code == 0 and "changed since" not in res.output, res.output
    ctr = run / "seed_0" / "ctr"
    (run / "abtest.json").unlink()
    # a model trained on another encoder's embeddings swapped in: refused, naming both
    shutil.copyfile(ctr / "s1" / "model.pt", tmp_path / "s1-model.pt")
    shutil.copyfile(ctr / "s2" / "model.pt", ctr / "s1" / "model.pt")
    res = CliRunner().invoke(main, ["abtest", "--run", str(run)])
    assert res.exit_code == 2 and "was made by another encoder" in res.output, res.output
    assert str(ctr / "s1" / "model.pt") in res.output
    shutil.copyfile(tmp_path / "s1-model.pt", ctr / "s1" / "model.pt")
    # a model of the same embeddings swapped in (S1+S2's plain model as S1+S2+IPS's)
    shutil.copyfile(ctr / "s1_s2" / "model.pt", ctr / "s1_s2_ips" / "model.pt")
    res = CliRunner().invoke(main, ["abtest", "--run", str(run), "--estimator", "dm"])
    assert res.exit_code == 0, res.output
    assert "note: seed_0/s1_s2_ips CTR model changed since results.json was written" in res.output
    assert "results.json's A/B test ran on other inputs: not used as the truth" in res.output
    assert "ope_validation" not in json.loads((run / "ope.json").read_text())
    res = CliRunner().invoke(main, ["abtest", "--run", str(run)])
    assert res.exit_code == 0, res.output
    assert "note: seed_0/s1_s2_ips CTR model changed since results.json was written" in res.output
    ab = json.loads((run / "abtest.json").read_text())
    assert ab["inputs_changed_since_run"] == ["seed_0/s1_s2_ips CTR model"]
    assert ab["provenance"]["models"]["seed_0/s1_s2_ips"] != prov["models"]["seed_0/s1_s2_ips"]
    res = CliRunner().invoke(main, ["abtest", "--run", str(run), "--estimator", "dm"])
    assert res.exit_code == 0, res.output
    v = json.loads((run / "ope.json").read_text())["ope_validation"]
    assert v["dm"]["n"] == len(METHODS) + 1  # validated against the fresh abtest.json


def test_ctr_seeds_pair_every_method_and_reuse_the_encoders(tiny_run, tmp_path):
    """--ctr-seeds 2 on a copy of the tiny run: the encoders are reused, a second CTR model
    per method trains under ctr_1/, every per-seed list pairs replicates, and the
    comparisons, the representation bias and the forest plot come out well-formed."""
    import shutil

    src, _ = tiny_run
    out = tmp_path / "two"
    shutil.copytree(src, out)
    first = json.loads((src / "results.json").read_text())
    res = CliRunner().invoke(
        main, ["run", "--preset", "tiny", "--seeds", "1", "--ctr-seeds", "2", "--out", str(out)]
    )
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert "encoder s1: done" not in res.output  # reused, not retrained
    r = json.loads((out / "results.json").read_text())
    assert r["ctr_seeds"] == 2 and r["replicates"] == [[0, 0], [0, 1]]
    for m in METHODS:
        assert (out / "seed_0" / "ctr_1" / METHODS[m].slug / "model.pt").is_file()
        auc = r["methods"][m]["auc"]["per_seed"]
        assert len(auc) == 2 and auc[0] == pytest.approx(first["methods"][m]["auc"]["per_seed"][0])
        assert len(r["ab_test"]["methods"][m]["ctr"]["per_seed"]) == 2
    rows = {(c["a"], c["b"], c["metric"]): c for c in r["comparisons"]}
    assert ("S1+S2+D", "S1+S2+H", "auc_random_exposure") in rows
    assert ("S1+S2+D", "S2", "ab_tail_exposure_share") in rows
    for c in rows.values():
        # one encoder seed: the two CTR seeds are averaged, and one mean gives no interval
        assert c["n"] == 1 and c["n_replicates"] == 2 and len(c["per_seed"]) == 2
        assert c["ci95"] is None and c["interval"] == "t over encoder-seed means"
    bias = r["representation_bias"]
    assert {e.name for e in encoder_order()} | {"S1+S2+D gated", "S1+S2+D debiased"} <= set(bias)
    assert len(bias["S1+S2+D debiased"]["overlap_tail"]["per_seed"]) == 2
    assert len(bias["s2"]["overlap_tail"]["per_seed"]) == 1  # encoders: one per encoder seed
    assert bias["s1"]["overlap_head"]["mean"] == pytest.approx(1.0)  # S1 against itself
    for e in bias.values():
        for k in ("overlap_head", "overlap_tail", "exposure_probe_auc"):
            v = e[k]["mean"]
            assert v is None or 0 <= v <= 1, (k, v)
    report = (out / "report.md").read_text()
    assert "## Paired comparisons" in report and "### Representation bias" in report
    assert (out / "plots" / "comparisons.png").stat().st_size > 1000
    ab = CliRunner().invoke(main, ["abtest", "--run", str(out)])
    assert ab.exit_code == 0, ab.output
    assert "ctr seed 1" in ab.output and "changed since" not in ab.output
