"""Pick the recipe whose checkpoint the default cache is built from (documented rule).

``python benchmarks/gpu/choose_recipe.py grid_plain.json grid_robust.json`` prints ``plain`` or
``robust``. The model trained at the full configuration only (``plain``, as MolmoE was) is used
unless its cheapest configuration keeps less than 30 % of its full configuration's mean accuracy
(all-or-nothing: the knobs would only switch the model off); then the mild robustness recipe's
model is used if it keeps more. Each grid holds the full and cheapest configurations on the same
held-out val requests (``experiments.eval_model_grid``).
"""

import json
import sys


def ratio(path: str) -> tuple[float, float, float]:
    g = json.load(open(path))["grid"]
    full = next(r for r in g if (r["tier"], r["p"], r["top_k"], r["blocks"]) == ("high", 1, 8, 16))
    cheap = next(r for r in g if (r["tier"], r["p"], r["top_k"], r["blocks"]) == ("low", 1, 4, 12))
    return full["score/mean"], cheap["score/mean"], cheap["score/mean"] / max(full["score/mean"], 1e-9)


if __name__ == "__main__":
    plain, robust = ratio(sys.argv[1]), ratio(sys.argv[2])
    print(f"plain: full {plain[0]:.3f} cheapest {plain[1]:.3f} ratio {plain[2]:.2f}; "
          f"robust: full {robust[0]:.3f} cheapest {robust[1]:.3f} ratio {robust[2]:.2f}", file=sys.stderr)
    print("plain" if plain[2] >= 0.30 or robust[2] <= plain[2] else "robust")
