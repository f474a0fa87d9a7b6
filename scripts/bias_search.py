"""The pre-registered search for a world where click-trained S2 has a selection bias
(docs/results.md, "When does S3 help?"; issue #35, deliverable 3).

On dev worlds only (world seeds 100 and 101, never the reported world 0), each mechanism
at one plausible and one strong setting (``SETTINGS``). Per world seed and setting:

- the world: the ``small`` preset plus the setting's world knobs, with 18,000 extra
  uniform retrieval queries (20,000 in all: a CI half-width of about 0.02,
  benchmarks/selection_bias_ci.py) on their own random stream;
- S1 (``small``'s InfoNCE pre-training): one per world seed and encoder shape, trained on
  the first world and reused in the others (S1 reads only the catalog, which the world
  knobs do not change: checked);
- S2 as ``visctr run``'s S2 method trains it (clicks only, from random init) on the
  setting's world, with the setting's encoder and S2 overrides;
- the selection-bias gap Δ(S2) against S1 with its paired bootstrap CI, as ``visctr run``
  computes it (``visctr.pipeline.bias.selection_rows``);
- the CTR side: plain CTR models on the S1 and the S2 vectors (and one with item-id
  features on the S1 vectors, for the worlds), their random-exposure AUC and calibration
  on head and tail items, and the head − tail AUC gap against S1's CTR model with a paired
  bootstrap CI over random-exposure queries (``visctr.eval.bias.ctr_head_tail``).

    python scripts/bias_search.py --out runs/bias-search --seed 100
    python scripts/bias_search.py --out runs/bias-search --seed 101
    python scripts/bias_search.py --out runs/bias-search --summary results/bias-search

Every stage is kept under ``--out`` and reused when the command is run again; each
setting's figures go to ``<out>/seed<N>/<setting>.json`` as soon as they exist.
``--summary DIR`` reads them all, applies the gate and writes ``DIR/results.json`` and
``DIR/report.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

EXTRA_RETRIEVAL = 18_000  # + small's 2,000 = 20,000 uniform retrieval queries
DEV_SEEDS = (100, 101)

# The gate, fixed before any run (docs/results.md, "When does S3 help?").
G1_DELTA = 0.05  # Δ(S2) >= this, with the CI's lower end > 0, on both dev worlds
G2_GAP = 0.02  # CTR side: S2's head − tail random-exposure AUC gap beyond S1's by >= this


@dataclass(frozen=True)
class Setting:
    mechanism: str  # a | b | c | d | base
    strength: str  # plausible | strong | combined | today
    describe: str
    world_tag: str  # settings with the same tag share a world
    world: dict[str, Any] = field(default_factory=dict)
    encoder: dict[str, Any] = field(default_factory=dict)  # EncoderConfig fields (S1 and S2)
    s2: dict[str, Any] = field(default_factory=dict)  # S2Config fields


_A1 = {"logging": {"hidden_categories": 1}}
_A2 = {"logging": {"hidden_categories": 3}}
_B1 = {"style_correlation": 0.9, "appeal_strength": 0.7}
_B2 = {"style_correlation": 0.99, "appeal_strength": 1.5}

# In the order they run: today's world first, then every strong setting, then the
# plausible ones.
SETTINGS: dict[str, Setting] = {
    "base": Setting("base", "today", "today's world (small, every knob at its default)", "base"),
    "a2": Setting("a", "strong", "3 of 10 categories never shown by the legacy", "a2", _A2),
    "b2": Setting("b", "strong", "style correlation 0.99, appeal strength 1.5", "b2", _B2),
    "c2": Setting(
        "c",
        "strong",
        "encoder 4 channels wide, 16-d embedding (S1 and S2)",
        "base",
        encoder={"width": 4, "embed_dim": 16},
    ),  # fmt: skip
    "d2": Setting(
        "d",
        "strong",
        "S2 negatives from shown items only, on the a2 world",
        "a2",
        _A2,
        s2={"negatives_from": "exposed"},
    ),  # fmt: skip
    "b2+a2": Setting("b", "combined", "b2 and a2 together", "b2+a2", {**_B2, **_A2}),
    "a1": Setting("a", "plausible", "1 of 10 categories never shown by the legacy", "a1", _A1),
    "b1": Setting("b", "plausible", "style correlation 0.9, appeal strength 0.7", "b1", _B1),
    "c1": Setting(
        "c",
        "plausible",
        "encoder 8 channels wide, 32-d embedding (S1 and S2)",
        "base",
        encoder={"width": 8, "embed_dim": 32},
    ),  # fmt: skip
    "d1": Setting(
        "d",
        "plausible",
        "S2 negatives from shown items only (the production setting)",
        "base",
        s2={"negatives_from": "exposed"},
    ),  # fmt: skip
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _replace(obj, fields: dict[str, Any]):
    return dataclasses.replace(obj, **fields) if fields else obj


def _enc_tag(s: Setting) -> str:
    return "-".join(f"{k}{v}" for k, v in sorted(s.encoder.items())) or "default"


class Search:
    def __init__(
        self, out: Path, seed: int, preset: str = "small", extra: int = EXTRA_RETRIEVAL
    ) -> None:
        from visctr.config import from_dict, to_dict
        from visctr.pipeline.config import resolve_run_config
        from visctr.world.simulate import SimConfig

        self.root = Path(out) / f"seed{seed}"
        self.root.mkdir(parents=True, exist_ok=True)
        self.seed = seed
        self.cfg = resolve_run_config(preset, seed=seed)
        self.extra = extra
        self._world_base = to_dict(self.cfg.world)
        self._sim = lambda d: from_dict(SimConfig, d, "world")
        self._ctr_preds: dict[str, dict[str, np.ndarray]] = {}

    # ---------------------------------------------------------------- stages
    def world(self, s: Setting):
        from visctr.world import World
        from visctr.world.simulate import simulate

        out = self.root / "worlds" / s.world_tag
        if not (out / "world.json").is_file():
            wcfg = _merge(self._world_base, {"extra_retrieval_queries": self.extra})
            wcfg = _merge(wcfg, s.world)
            log(f"world {s.world_tag}: simulating")
            simulate(self._sim(wcfg), self.seed, out)
        return World.load(out)

    def s1(self, s: Setting) -> Path:
        from visctr.encoders import pretrain

        base = self.world(SETTINGS["base"])  # S1 reads the catalog only
        cfg = _replace(self.cfg.s1, {"encoder": _replace(self.cfg.s1.encoder, s.encoder)})
        out = self.root / f"s1-{_enc_tag(s)}"
        if not (out / "encoder.pt").is_file():
            log(f"S1 ({_enc_tag(s)}): training")
        return pretrain(base, cfg, out, self.seed)

    def s2(self, name: str, s: Setting, world) -> Path:
        from visctr.encoders import finetune

        cfg = _replace(self.cfg.s2, {"lambda_s1": 0.0, **s.s2})  # run's S2: clicks only
        cfg = _replace(cfg, {"encoder": _replace(cfg.encoder, s.encoder)})
        out = self.root / name / "s2"
        if not (out / "encoder.pt").is_file():
            log(f"{name}: S2 training")
        return finetune(world, cfg, out, self.seed)

    def embed(self, encoder: Path, world, out: Path) -> Path:
        from visctr.encoders import embed

        if not (out / "items.parquet").is_file():
            embed(encoder, world, out)
        return out

    def ctr(self, world, emb: Path, out: Path, item_id: bool = False) -> dict[str, np.ndarray]:
        from visctr.ctr import predict_ctr, train_ctr

        key = str(out)
        if key not in self._ctr_preds:
            if not (out / "model.pt").is_file():
                cfg = _replace(self.cfg.ctr, {"use_item_id": True} if item_id else {})
                train_ctr(world, emb, out, cfg, self.seed)
            self._ctr_preds[key] = predict_ctr(out, world, emb, "random")
        return self._ctr_preds[key]

    # ---------------------------------------------------------------- one setting
    def run(self, name: str) -> dict:
        from visctr.eval.bias import ctr_head_tail
        from visctr.eval.retrieval import evaluate_retrieval
        from visctr.ids import IdIndex
        from visctr.pipeline.bias import selection_rows

        s = SETTINGS[name]
        t0 = time.perf_counter()
        world = self.world(s)
        base = self.world(SETTINGS["base"])
        if not np.array_equal(world.items["item_id"], base.items["item_id"]) or not np.array_equal(
            world.item_images[:], base.item_images[:]
        ):
            raise SystemExit(
                f"{name}: the catalog differs from the base world's: S1 cannot be shared"
            )
        s1 = self.s1(s)
        s2 = self.s2(name, s, world)
        wdir = self.root / "embeddings" / s.world_tag
        e1 = self.embed(s1, world, wdir / f"s1-{_enc_tag(s)}")
        e2 = self.embed(s2, world, self.root / name / "emb-s2")
        m1, top1 = evaluate_retrieval(world, e1)
        m2, top2 = evaluate_retrieval(world, e2)
        is_head = np.asarray(world.items["is_head"], dtype=bool)
        delta = selection_rows(world, {"S1": top1, "S2": top2}, {"S2": "s2"}, self.seed)["S2"]
        log(
            f"{name}: Δ(S2) {delta['delta']:+.3f} [{delta['ci95'][0]:+.3f}, {delta['ci95'][1]:+.3f}]"
        )

        cdir = self.root / "ctr" / s.world_tag
        p1 = self.ctr(world, e1, cdir / f"s1-{_enc_tag(s)}")
        p2 = self.ctr(world, e2, self.root / name / "ctr-s2")
        items = IdIndex(world.items["item_id"])
        head_imp = is_head[items.rows(p1["item_id"], strict=True)]
        assert np.array_equal(p1["query_id"], p2["query_id"])
        ctr_s2 = ctr_head_tail(p2["labels"], p2["probs"], head_imp, p2["query_id"], p1["probs"],
                               seed=self.seed)  # fmt: skip
        ctr_s1 = ctr_head_tail(p1["labels"], p1["probs"], head_imp, p1["query_id"], n_boot=1)
        out = {
            "setting": name,
            "mechanism": s.mechanism,
            "strength": s.strength,
            "describe": s.describe,
            "world_seed": self.seed,
            "world_summary": {
                k: world.meta["summary"].get(k)
                for k in (
                    "never_shown_share_train",
                    "head_share_of_train_impressions",
                    "appeal_popularity_correlation",
                    "hidden_categories",
                    "hidden_items_share",
                    "clicks",
                    "queries",
                )
            },  # fmt: skip
            "retrieval": {
                "S1": {k: m1[k] for k in ("hr@10", "head_hr@10", "longtail_hr@10")},
                "S2": {k: m2[k] for k in ("hr@10", "head_hr@10", "longtail_hr@10")},
            },
            "delta_s2": delta,
            "ctr_s2_vs_s1": ctr_s2,
            "ctr_s1": ctr_s1,
        }
        if not s.encoder and not s.s2:  # a world setting: the item-id model too
            pid = self.ctr(world, e1, cdir / "s1-item-id", item_id=True)
            out["ctr_item_id_vs_s1"] = ctr_head_tail(
                pid["labels"], pid["probs"], head_imp, pid["query_id"], p1["probs"], seed=self.seed
            )
        out["seconds"] = round(time.perf_counter() - t0, 1)
        from visctr.io import write_json

        write_json(out, self.root / f"{name}.json")
        log(f"{name}: CTR gap S2 − S1 {ctr_s2['gap_delta']:+.3f} "
            f"[{ctr_s2['ci95'][0]:+.3f}, {ctr_s2['ci95'][1]:+.3f}] ({out['seconds']:.0f} s)")  # fmt: skip
        return out


# ---------------------------------------------------------------------- exploratory


def explore_s3(search: Search, name: str) -> dict:
    """Not part of the pre-registered rule: on setting ``name``'s world, the run's S1+S2
    encoder and its plain, S1+S2+H and S1+S2+D CTR models; Δ of each retrieval space
    against S1 and the CTR gap of H and D against S1+S2. Written to
    ``<out>/seed<N>/explore-<name>.json``."""
    from visctr.encoders import finetune
    from visctr.eval.bias import ctr_head_tail
    from visctr.eval.retrieval import evaluate_retrieval
    from visctr.ids import IdIndex
    from visctr.io import write_json
    from visctr.pipeline.bias import selection_rows
    from visctr.pipeline.methods import CTR_VARIANTS
    from visctr.s3.artifact import debias_transform

    s = SETTINGS[name]
    if s.encoder or s.s2:
        raise SystemExit(f"--explore-s3 takes a world setting, not {name}")
    world = search.world(s)
    s1 = search.s1(s)
    root = search.root / f"explore-{name}"
    enc = root / "s1_s2"
    if not (enc / "encoder.pt").is_file():
        log(f"{name}: S1+S2 training (exploratory)")
    finetune(world, search.cfg.s2, enc, search.seed, init=s1)
    e1 = search.embed(s1, world, search.root / "embeddings" / s.world_tag / f"s1-{_enc_tag(s)}")
    e12 = search.embed(enc / "encoder.pt", world, root / "emb-s1_s2")
    is_head = np.asarray(world.items["is_head"], dtype=bool)
    _, top1 = evaluate_retrieval(world, e1)
    out: dict[str, Any] = {"setting": name, "world_seed": search.seed, "exploratory": True}
    preds = {}
    for method, variant in (("S1+S2", "plain"), ("S1+S2+H", "head"), ("S1+S2+D", "debias")):
        cfg = CTR_VARIANTS[variant](search.cfg.ctr)
        d = root / f"ctr-{variant}"
        if not (d / "model.pt").is_file():
            from visctr.ctr import train_ctr

            ref = e1 if cfg.debias.enabled and cfg.debias.needs_reference else None
            train_ctr(world, e12, d, cfg, search.seed, reference=ref)
        transform = debias_transform(d / "debias.pt") if cfg.debias.enabled else None
        m, top = evaluate_retrieval(world, e12, transform)
        out[method] = {
            "delta": selection_rows(
                world, {"S1": top1, method: top}, {method: method}, search.seed
            )[method],  # fmt: skip
            "hr@10": m["hr@10"],
            "longtail_hr@10": m["longtail_hr@10"],
        }
        from visctr.ctr import predict_ctr

        preds[method] = predict_ctr(d, world, e12, "random")
    ref = preds["S1+S2"]
    head = is_head[IdIndex(world.items["item_id"]).rows(ref["item_id"], strict=True)]
    for method in ("S1+S2+H", "S1+S2+D"):
        p = preds[method]
        out[method]["ctr_vs_s1_s2"] = ctr_head_tail(
            p["labels"], p["probs"], head, p["query_id"], ref["probs"], seed=search.seed
        )
    d, h = preds["S1+S2+D"], preds["S1+S2+H"]
    out["D_vs_H_ctr"] = ctr_head_tail(
        d["labels"], d["probs"], head, d["query_id"], h["probs"], seed=search.seed
    )
    write_json(out, search.root / f"explore-{name}.json")
    log(f"{name} (exploratory): Δ " + "  ".join(
        f"{k} {out[k]['delta']['delta']:+.3f} [{out[k]['delta']['ci95'][0]:+.3f}, "
        f"{out[k]['delta']['ci95'][1]:+.3f}]" for k in ("S1+S2", "S1+S2+H", "S1+S2+D")
    ))  # fmt: skip
    return out


# ---------------------------------------------------------------------- summary


def gate(rows: dict[int, dict]) -> dict[str, bool]:
    """G1 / G2 of one setting over its dev worlds (``rows``: world seed -> figures)."""
    both = all(s in rows for s in DEV_SEEDS)
    g1 = both and all(
        rows[s]["delta_s2"]["delta"] >= G1_DELTA and rows[s]["delta_s2"]["ci95"][0] > 0
        for s in DEV_SEEDS
    )
    g2 = both and all(
        rows[s]["ctr_s2_vs_s1"]["gap_delta"] >= G2_GAP and rows[s]["ctr_s2_vs_s1"]["ci95"][0] > 0
        for s in DEV_SEEDS
    )
    return {"complete": both, "G1": bool(g1), "G2": bool(g2), "passes": bool(g1 or g2)}


def _ci(r: dict, key: str = "delta") -> str:
    return f"{r[key]:+.3f} [{r['ci95'][0]:+.3f}, {r['ci95'][1]:+.3f}]"


def summary(out: Path, dest: Path) -> dict:
    from visctr.io import write_json, write_text

    found: dict[str, dict[int, dict]] = {}
    explored: list[dict] = []
    for f in sorted(Path(out).glob("seed*/*.json")):
        r = json.loads(f.read_text())
        if r.get("exploratory"):
            explored.append(r)
            continue
        found.setdefault(r["setting"], {})[int(r["world_seed"])] = r
    result = {
        "rule": {
            "dev_world_seeds": list(DEV_SEEDS),
            "G1": f"Δ(S2) >= {G1_DELTA} with the 95% CI's lower end > 0 on both dev worlds",
            "G2": f"S2's head − tail random-exposure AUC gap beyond S1's by >= {G2_GAP}, "
            "CI lower end > 0, on both dev worlds",
            "retrieval_queries": sorted(
                {
                    r["world_summary"]["queries"]["retrieval"]
                    for w in found.values()
                    for r in w.values()
                }
            ),
        },
        "settings": {},
    }
    lines = [
        "# The selection-bias search (dev worlds 100 and 101)",
        "",
        "Generated by `python scripts/bias_search.py --summary`; the rule is in "
        'docs/results.md, "When does S3 help?".',
        "",
        "| setting | mechanism | world | Δ(S2) [95% CI] | S1 / S2 HR@10 | tail-target top-10 "
        "head share S2 − S1 | CTR gap S2 − S1 [95% CI] | CTR gap item-id − S1 [95% CI] | "
        "calibration tail/head S1, S2 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in SETTINGS:
        if name not in found:
            continue
        rows = found[name]
        verdict = gate(rows)
        result["settings"][name] = {
            "gate": verdict,
            "per_world": {str(k): v for k, v in rows.items()},
        }
        for seed, r in sorted(rows.items()):
            d, c = r["delta_s2"], r["ctr_s2_vs_s1"]
            iid = r.get("ctr_item_id_vs_s1")
            lines.append(
                f"| {name} | {r['describe']} | {seed} | {_ci(d)} | "
                f"{r['retrieval']['S1']['hr@10']:.3f} / {r['retrieval']['S2']['hr@10']:.3f} | "
                f"{d.get('tail_top10_head_share_diff', float('nan')):+.3f} | "
                f"{_ci(c, 'gap_delta')} | {_ci(iid, 'gap_delta') if iid else '—'} | "
                f"{r['ctr_s1']['calibration_tail_over_head']:.2f}, "
                f"{c['calibration_tail_over_head']:.2f} |"
            )
    lines += ["", "| setting | complete | G1 | G2 | passes |", "|---|---|---|---|---|"]
    for name, r in result["settings"].items():
        g = r["gate"]
        lines.append(f"| {name} | {g['complete']} | {g['G1']} | {g['G2']} | {g['passes']} |")
    result["any_passes"] = any(r["gate"]["passes"] for r in result["settings"].values())
    if explored:
        result["exploratory_s3"] = explored
        lines += [
            "",
            "## Exploratory, outside the rule: S3 where S2 had a gap",
            "",
            "The run's S1+S2 encoder and its S1+S2, S1+S2+H and S1+S2+D CTR models on the "
            "setting's world. Δ of each retrieval space against S1 (S3 methods retrieve "
            "through their gated vectors); CTR: head − tail random-exposure AUC gap of D "
            "minus H's.",
            "",
            "| setting | world | Δ S1+S2 | Δ S1+S2+H | Δ S1+S2+D | tail HR@10 H / D | "
            "CTR gap D − H [95% CI] | tail AUC H / D |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in sorted(explored, key=lambda r: (r["setting"], r["world_seed"])):
            dh = r["D_vs_H_ctr"]
            lines.append(
                f"| {r['setting']} | {r['world_seed']} | {_ci(r['S1+S2']['delta'])} | "
                f"{_ci(r['S1+S2+H']['delta'])} | {_ci(r['S1+S2+D']['delta'])} | "
                f"{r['S1+S2+H']['longtail_hr@10']:.3f} / {r['S1+S2+D']['longtail_hr@10']:.3f} | "
                f"{_ci(dh, 'gap_delta')} | "
                f"{r['S1+S2+H']['ctr_vs_s1_s2']['auc_tail']:.3f} / {dh['auc_tail']:.3f} |"
            )
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    write_json(result, dest / "results.json")
    write_text("\n".join(lines) + "\n", dest / "report.md")
    print("\n".join(lines))
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="stage folder (kept and reused)")
    ap.add_argument("--seed", type=int, choices=DEV_SEEDS, help="the dev world to run")
    ap.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--summary", type=Path, help="write the gate's results and report here")
    ap.add_argument("--preset", default="small", help="tiny: a smoke test, not the search")
    ap.add_argument("--extra-retrieval", type=int, default=EXTRA_RETRIEVAL)
    ap.add_argument(
        "--explore-s3",
        nargs="+",
        choices=list(SETTINGS),
        help="outside the rule: S1+S2, S1+S2+H and S1+S2+D on these world settings",
    )
    args = ap.parse_args(argv)
    if args.summary is not None:
        summary(args.out, args.summary)
        return 0
    if args.seed is None:
        ap.error("--seed or --summary is required")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    search = Search(args.out, args.seed, args.preset, args.extra_retrieval)
    if args.explore_s3:
        for name in args.explore_s3:
            explore_s3(search, name)
        return 0
    for name in args.settings:
        search.run(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
