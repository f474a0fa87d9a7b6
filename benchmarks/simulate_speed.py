"""Wall time and peak RSS of `visctr simulate` per preset, against the budgets.

Budgets (issue #2): small <= 60 s; full (60k items, >= 1M training impressions) <= 600 s
with peak RSS <= 4 GB, on a 2-core machine. Each preset runs in a fresh subprocess.

    python benchmarks/simulate_speed.py [small full]
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUDGET_S = {"tiny": 10, "small": 60, "full": 600}
BUDGET_RSS_GB = 4.0


def measure(preset: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "world"
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "visctr.cli", "simulate", "--preset", preset, "--out", str(out)],
            check=True,
            capture_output=True,
        )
        wall = time.perf_counter() - t0
        rss_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2
        meta = json.loads((out / "world.json").read_text())
        s = meta["summary"]
        return {
            "preset": preset,
            "wall_s": wall,
            "peak_rss_gb": rss_gb,
            "rss_note": "" if rss_gb > before / 1024**2 else " (max over earlier runs)",
            "items": s["items"],
            "train_impressions": s["impressions"]["train"],
            "never_shown": s["never_shown_share_train"],
        }


def main() -> None:
    presets = sys.argv[1:] or ["small", "full"]
    for p in presets:
        r = measure(p)
        print(
            f"simulate --preset {p}: {r['wall_s']:.1f}s (budget {BUDGET_S[p]}s, "
            f"ratio {r['wall_s'] / BUDGET_S[p]:.2f}), peak RSS {r['peak_rss_gb']:.2f} GB "
            f"(budget {BUDGET_RSS_GB} GB){r['rss_note']}; {r['items']:,} items, "
            f"{r['train_impressions']:,} training impressions, "
            f"{r['never_shown']:.1%} never shown"
        )


if __name__ == "__main__":
    main()
