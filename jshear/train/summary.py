"""The before/after table printed at the end of a run."""

from __future__ import annotations


def _fmt(x, spec):
  return "-" if x is None else format(x, spec)


def print_summary(s: dict) -> None:
  print()
  print(f"workdir: {s['workdir']}   stages: {','.join(s['stages'])}")
  if s.get("hf_dir"):
    print(f"Hugging Face model: {s['hf_dir']}")
  print(f"params: source {_fmt(s.get('source_params'), ',')}  ->  final "
        f"{_fmt(s.get('final_params'), ',')}")
  ev = s.get("eval") or {}
  if ev:
    domains = sorted(next(iter(ev.values())))
    w = [max(9, len(d) + 2) for d in domains]
    print(f"{'held-out loss':<16}" + "".join(f"{d:>{n}}" for d, n in zip(domains, w)) +
          f"{'mean':>9}")
    stats = s.get("eval_test") or {}
    for name, losses in ev.items():
      vals = [losses[d] for d in domains]
      mean = sum(vals) / len(vals)
      se = (stats.get(name) or {}).get("se")
      print(f"{name:<16}" + "".join(f"{v:>{n}.3f}" for v, n in zip(vals, w)) + f"{mean:>9.3f}"
            + (f" ± {se:.3f}" if se is not None else ""))
    rows = next((v["rows"] for v in stats.values() if v.get("rows")), None)
    if rows:  # the test rows, never those that steered training
      print(f"{'test rows':<16}" + "".join(f"{rows.get(d, 0):>{n}d}" for d, n in zip(domains, w)))
  tps = s.get("tokens_per_s") or {}
  if tps:
    print("tokens/s: " + ", ".join(f"{k} {v:,.0f}" for k, v in tps.items()))
