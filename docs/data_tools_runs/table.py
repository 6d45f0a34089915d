"""Per-domain and mean paired differences from the runs' cached heldout.json (same rows)."""
import json, sys, numpy as np
base, runs = sys.argv[1], sys.argv[2:]
def load(r):
  h = json.load(open(f"runs/{r}/heldout.json"))
  h = h.get("heldout", h)
  return {d: np.asarray(v["row_losses"]) for d, v in h["domains"].items()}
b = load(base); doms = sorted(b)
def mean_rows(x):  # the reported mean: the mean over domains of each domain's mean
  return np.mean([x[d].mean() for d in doms])
print("| run | " + " | ".join(doms) + " | mean | paired vs " + base + " |")
print("|---|" + "---:|" * (len(doms) + 2))
for r in [base] + runs:
  x = load(r)
  cells = []
  for d in doms:
    diff = x[d] - b[d]
    cells.append(f"{x[d].mean():.3f}" if r == base else f"{diff.mean():+.4f} ± {diff.std(ddof=1)/np.sqrt(len(diff)):.4f}")
  # mean over domains of paired diffs; s.e. from per-domain s.e.s (domains independent)
  ses = [ (x[d]-b[d]).std(ddof=1)/np.sqrt(len(b[d])) for d in doms]
  m = np.mean([(x[d]-b[d]).mean() for d in doms]); se = np.sqrt(np.sum(np.square(ses)))/len(doms)
  print(f"| {r} | " + " | ".join(cells) + f" | {mean_rows(x):.4f} | " + ("—" if r == base else f"{m:+.4f} ± {se:.4f}") + " |")
