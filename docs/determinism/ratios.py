"""Per-round ratios (setting / unpinned) from time_jobs.sh output: median and min-max, wall and user CPU.
Usage: python ratios.py out/timing_distill.log [baseline=unpinned]"""
import statistics as st, sys
from collections import defaultdict

rows = defaultdict(dict)
loads = []
for line in open(sys.argv[1]):
    p = line.split()
    if len(p) == 7 and p[0].isdigit():
        rows[int(p[0])][p[1]] = (float(p[2]), float(p[3]))
        loads += [float(p[5]), float(p[6])]
base = sys.argv[2] if len(sys.argv) > 2 else "unpinned"
names = sorted({n for r in rows.values() for n in r} - {base})
print(f"{sys.argv[1]}: {len(rows)} rounds; 1-min load during runs {min(loads):.2f}-{max(loads):.2f}")
for kind, k in (("wall", 0), ("user", 1)):
    b = [r[base][k] for r in rows.values()]
    print(f"  {base:16s} {kind}: median {st.median(b):6.2f} s (min {min(b):.2f}, max {max(b):.2f})")
    for n in names:
        v = [r[n][k] for r in rows.values()]
        q = [r[n][k] / r[base][k] for r in rows.values()]
        print(f"  {n:16s} {kind}: median {st.median(v):6.2f} s; ratio median {st.median(q):.3f} "
              f"(min {min(q):.3f}, max {max(q):.3f}); per round " + " ".join(f"{x:.2f}" for x in q))
