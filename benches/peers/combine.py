"""Joins the two sides of the CPU peer comparison (benches/peers/run.sh) into one
markdown table: for each case, dtype and pass, PyTorch, XLA, candle-nn and ours (ms),
and who leads by how much (ours against the faster of PyTorch and XLA). Given several
rounds of each side, every time is its best round's.

    python benches/peers/combine.py CSV...
"""

import csv
import sys
from collections import OrderedDict


def main():
    times = OrderedDict()
    for path in sys.argv[1:]:
        with open(path) as fh:
            for row in csv.DictReader(fh):
                t = times.setdefault((row["case"], row["dtype"]), {})
                ms = float(row["ms"])
                t[row["impl"]] = min(ms, t.get(row["impl"], ms))
    fmt = lambda v: "—" if v is None else (f"{v:.3f}" if v < 1 else f"{v:.2f}")
    print("| case | dtype | pass | PyTorch | XLA | candle-nn | ours | ours, autograd (candle's share) | who leads |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (case, dt), t in times.items():
        for p in ("forward", "backward", "forward+backward"):
            ours = t.get(f"ours {p}")
            peers = {k: t.get(f"{k} {p}") for k in ("PyTorch", "XLA")}
            if ours is None and all(v is None for v in peers.values()):
                continue
            auto = "—"
            if p == "forward+backward" and "ours autograd" in t:
                auto = f"{fmt(t['ours autograd'])} ({fmt(t.get('candle autograd bookkeeping'))})"
            best = min(((v, k) for k, v in peers.items() if v is not None), default=None)
            lead = "—"
            if best is not None and ours is not None:
                lead = f"ours {best[0] / ours:.2f}×" if ours <= best[0] else f"{best[1]} {ours / best[0]:.2f}×"
            cnn = t.get("candle-nn forward") if p == "forward" else None
            print(f"| {case} | {dt} | {p} | {fmt(peers['PyTorch'])} | {fmt(peers['XLA'])} | {fmt(cnn)} | "
                  f"{fmt(ours)} | {auto} | {lead} |")


if __name__ == "__main__":
    main()
