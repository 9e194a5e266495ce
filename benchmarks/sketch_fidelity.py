"""How close is batch-aware dynamicAL with gradient sketches to the same greedy with exact
per-sample gradients? Measured as BADGE's and Coreset's sharding approximation was: overlap of
the picks with the exact algorithm's.

A timm test_resnet is trained on Fashion-MNIST labels (as the quality benchmark does), then for
a candidate set from the pool: exact per-sample gradients of the pseudo-label loss (torch.func,
all parameters), their exact pairwise inner products, and the sketched ones for several sketch
sizes (the sketch covers every parameter, BatchNorm's through its rule). Printed per size:
correlation and relative error of the off-diagonal inner products, the overlap of the greedy
picks (``diverse_greedy``) with those of the exact greedy, and the sketch's time.

    python benchmarks/sketch_fidelity.py [--candidates 400] [--picks 50] [--labels 1000]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from raydal.scoring.batch_dynamical import diverse_greedy
from raydal.scoring.sketch import gradient_sketch

HERE = Path(__file__).resolve().parent


def per_sample_gradients(model, x, names, chunk=32) -> torch.Tensor:
    """(N, P) float64 pseudo-label gradients of the named parameters (model in eval mode)."""
    params = {n: p.detach() for n, p in model.named_parameters()}

    def loss(p, xi):
        out = torch.func.functional_call(model, p, (xi[None],))
        return F.cross_entropy(out, out.argmax(1))

    grad = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))
    rows = []
    for s in range(0, len(x), chunk):
        g = grad(params, x[s:s + chunk])
        rows.append(torch.cat([g[n].flatten(1) for n in names], 1).double())
    return torch.cat(rows)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--candidates", type=int, default=400)
    p.add_argument("--picks", type=int, default=50)
    p.add_argument("--labels", type=int, default=1000)
    p.add_argument("--dims", type=int, nargs="+", default=[32, 128, 512])
    p.add_argument("--diversity", type=float, default=1.0)
    p.add_argument("--data-dir", default="/tmp/raydal-bench/fashion-mnist")
    p.add_argument("--out", default=str(HERE / "results" / "sketch_fidelity.json"))
    args = p.parse_args(argv)
    import al_quality as aq  # benchmarks/al_quality.py: the same data and training
    torch.set_num_threads(1)
    regime = aq.Regime.load(HERE / "regimes" / "mid-budget.yaml")
    ids, x, y = aq.load_data(regime, Path(args.data_dir))[:3]
    rng = np.random.default_rng(0)
    rows = rng.permutation(len(ids))
    labeled, cand = rows[:args.labels], rows[args.labels:args.labels + args.candidates]
    model = aq.train(x[labeled], y[labeled], regime.training, regime.spec(), seed=0)[0]
    model = model.double().eval()
    xc = x[cand].double()
    names_all = [n for n, q in model.named_parameters() if q.requires_grad]
    t = time.perf_counter()
    g_all = per_sample_gradients(model, xc, names_all)
    print(f"exact per-sample gradients {tuple(g_all.shape)} ({time.perf_counter() - t:.0f} s)")
    scores = (g_all ** 2).sum(1).numpy()  # ||g_u||^2: dynamicAL with ip_weight 0
    off = ~np.eye(len(cand), dtype=bool)
    exact = (g_all @ g_all.T).numpy()
    # the exact greedy: deduction with exact inner products (the sketch's E[.])
    ref = diverse_greedy(scores, g_all.numpy(), args.picks, args.diversity)
    result = {"candidates": len(cand), "picks": args.picks, "labels": args.labels,
              "diversity": args.diversity, "dims": []}
    for dim in args.dims:
        t = time.perf_counter()
        sk = gradient_sketch(model, xc, dim=dim, seed=0)
        row = {"dim": dim, "sketch_s": time.perf_counter() - t}
        est = (sk @ sk.T).numpy()
        row["corr_all"] = float(np.corrcoef(est[off], exact[off])[0, 1])
        row["rel_err_all"] = float(np.abs(est[off] - exact[off]).mean()
                                   / np.abs(exact[off]).mean())
        picks = diverse_greedy(scores, sk.numpy(), args.picks, args.diversity)
        row["pick_overlap"] = len(set(picks) & set(ref)) / args.picks
        result["dims"].append(row)
        print(json.dumps(row))
    plain = set(np.argsort(-scores, kind="stable")[:args.picks].tolist())
    result["plain_top_overlap_with_exact_greedy"] = len(plain & set(ref)) / args.picks
    print(json.dumps({k: v for k, v in result.items() if k != "dims"}))
    Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
