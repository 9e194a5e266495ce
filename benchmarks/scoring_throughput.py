"""Cost of exact dynamicAL scoring versus plain inference (timm resnet18 / resnet50, random init).

Each (model, method) runs in a fresh subprocess so that its peak memory can be read as a
ru_maxrss delta on CPU (torch.cuda.max_memory_allocated on GPU); the table's times come from one
more process that runs all methods but vmap round-robin, so that load drift on a shared machine
shifts every method alike. Methods:
  forward   inference, no_grad (the unit of the ratios)
  train     forward + backward of the summed loss over all parameters (a training step)
  vmap      chunked torch.func.vmap per-sample gradients (the naive exact reference)
  fast      the exact one-pass path (raydal.scoring.dynamical_scores, method="fast"), with the
            paper's inner product against g_L (ip_weight 2)
  fast_norm the same path for ||g_u||^2 alone (ip_weight 0, the dynamicAL strategy's default)
  head      last-layer closed form (params="head")
Also: bf16 autocast agreement with fp32 (top-b overlap, Spearman) over a pool.

    python benchmarks/scoring_throughput.py [--device cuda] [--quick]
                                            [--profile | --ratios-only | --ops] [--out PATH]

--quick writes under /tmp/raydal-bench/quick unless --out says otherwise (never over the
committed results). --ratios-only times the methods but vmap round-robin in one process, nothing
else (no per-method memory processes, no bf16 agreement): a short run for a quiet window.

--ops counts the operators a scoring call dispatches against a training step's (``count_ops``):
torch.profiler CPU events (``len(prof.events())``: every recorded operator call, nested ones
included, e.g. aten::matmul and the aten::bmm it calls, plus the autograd engine's per-node
entries), of the third call of each (two warm-ups), timm resnet50 at 32 px, batch 4. The training
step is what raydal/train.py runs: train mode, forward, mean cross-entropy, zero_grad, backward,
torch.optim.Adam step with its defaults (on a CPU the per-parameter for-loop implementation);
also reported against forward + backward alone (eval mode, autograd.grad of the summed loss) and
against Adam(foreach=True), the step without the optimiser's per-parameter loop.

``time_scorer(...)`` (importable) gives median ms of a forward pass, a training step and a
scoring call for one configuration, on a CPU or a GPU (CUDA events), fp32 or bf16, with or without
a CUDA graph, with the scorer's contractions in bf16 or fp32 (``contractions=``) and cuBLAS TF32
for them or not (``tf32=``).

--profile prints where the fast path's time goes instead: fast, fast_norm and every <g_L, g_u>
from one forward-mode pass (torch.func.jvp, the JVP lever) against forward and train; rule time
by layer kind in a fast and a fast_norm pass; both weight forms of every spatial convolution on
its own (A, G), the patches alone; the vmap fallback.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

CONFIGS = [  # model, image size, batch, samples timed for vmap (None: the whole batch)
    {"model": "resnet18", "img": 32, "batch": 64, "vmap_samples": {"cpu": None, "cuda": None}},
    {"model": "resnet50", "img": 224, "batch": 16, "vmap_samples": {"cpu": 4, "cuda": None}},
]
QUICK = [
    {"model": "resnet18", "img": 32, "batch": 8, "vmap_samples": {"cpu": 4, "cuda": None}},
    {"model": "resnet50", "img": 64, "batch": 4, "vmap_samples": {"cpu": 2, "cuda": None}},
]
METHODS = ["forward", "train", "vmap", "fast", "fast_norm", "head"]
QUICK_DIR = Path("/tmp/raydal-bench/quick")
# the profile skips a layer's Gram form above this (the stem at 224 px would need 20 GB)
GRAM_PROFILE_MAX_BYTES = 2 * 2**30
GOALS = {"fast_vs_train_max": 1.25, "fast_vs_forward_max": 4.0, "fast_speedup_vs_vmap_min": 25.0,
         "head_throughput_vs_forward_min": 0.9, "fast_memory_vs_train_max": 1.5}


# --- worker (one method in a fresh process) -----------------------------------------------------

def _setup(cfg: dict, device: str, n: int | None = None):
    import timm
    import torch
    from raydal.hostmem import keep_freed_blocks
    keep_freed_blocks()  # as raydal's scoring and training processes run
    torch.manual_seed(0)
    model = timm.create_model(cfg["model"], pretrained=False, num_classes=10).to(device).eval()
    x = torch.randn(n or cfg["batch"], 3, cfg["img"], cfg["img"], device=device)
    if cfg.get("channels_last"):
        model, x = (t.to(memory_format=torch.channels_last) for t in (model, x))
    return model, x


def _sync(device: str):
    import torch
    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


def _peak_bytes(device: str) -> int:
    import resource
    import torch
    if device == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _runners(model, x) -> dict:
    """method -> a function that runs it once on x (B, ...); g_L random (values do not change
    cost), over all parameters (params="head" ignores the others)."""
    import torch
    import torch.nn.functional as F
    from raydal.scoring.grads import _select_params, dynamical_scores

    g_L = {k: torch.randn_like(p) * 1e-2 for k, p in _select_params(model, "all").items()}

    @torch.no_grad()
    def forward():
        model(x)

    def train_step():
        out = model(x)
        torch.autograd.grad(F.cross_entropy(out, out.argmax(1), reduction="sum"),
                            list(model.parameters()))

    return {
        "forward": forward,
        "train": train_step,
        "vmap": lambda: dynamical_scores(model, x, g_L=g_L, method="vmap", chunk_size=32),
        "fast": lambda: dynamical_scores(model, x, g_L=g_L),
        "fast_norm": lambda: dynamical_scores(model, x, ip_weight=0.0),
        "head": lambda: dynamical_scores(model, x, g_L=g_L, params="head"),
    }


def _interleaved(cfg: dict, device: str, warmup: int, repeats: int) -> dict:
    """ms per batch of every method but vmap, timed round-robin in ONE process: load that drifts
    during the run shifts all methods alike, so their ratios hold (the per-method processes of
    ``_worker`` run minutes apart)."""
    import torch
    model, x = _setup(cfg, device)
    runners = {k: f for k, f in _runners(model, x).items() if k != "vmap"}
    sync = _sync(device)
    times: dict[str, list] = {k: [] for k in runners}
    for i in range(warmup + repeats):
        for name, run in runners.items():
            sync()
            start = time.perf_counter()
            run()
            sync()
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def _worker(cfg: dict, method: str, device: str, warmup: int, repeats: int) -> dict:
    import torch

    n = cfg["vmap_samples"][device] if method == "vmap" else None
    model, x = _setup(cfg, device, n)
    run = _runners(model, x)[method]
    sync = _sync(device)
    if device == "cuda":
        sync()
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() if device == "cuda" else _peak_bytes(device)
    times = []
    for i in range(warmup + repeats):
        sync()
        start = time.perf_counter()
        run()
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    samples = len(x)
    ms = statistics.median(times) * 1e3 * cfg["batch"] / samples  # per batch of cfg["batch"]
    return {"ms_per_batch": ms, "timed_samples": samples, "repeats": repeats,
            "extrapolated": samples != cfg["batch"],
            "peak_extra_mib": (_peak_bytes(device) - base) / 2**20,
            "params": sum(p.numel() for p in model.parameters())}


def _spearman(a, b) -> float:
    import torch
    ra, rb = (t.argsort().argsort().double() for t in (a, b))
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def _agreement(cfg: dict, device: str, pool: int, top_fraction: float = 0.1) -> dict:
    """fp32 vs bf16-autocast scores over a pool: top-b overlap and Spearman rank correlation."""
    import torch
    from raydal.scoring.grads import dynamical_scores, labeled_gradient
    model, x = _setup(cfg, device, pool)
    gen = torch.Generator().manual_seed(1)
    lx = torch.randn(64, 3, cfg["img"], cfg["img"], generator=gen).to(device)
    g_L = labeled_gradient(model, lx, torch.randint(0, 10, (64,), generator=gen).to(device),
                           batch_size=cfg["batch"])
    scores = {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        start = time.perf_counter()
        scores[name] = torch.cat([dynamical_scores(model, x[s:s + cfg["batch"]], g_L=g_L,
                                                   autocast_dtype=dtype)
                                  for s in range(0, pool, cfg["batch"])]).cpu()
        scores[name + "_s"] = time.perf_counter() - start
    b = max(1, int(top_fraction * pool))
    top = [set(scores[k].topk(b).indices.tolist()) for k in ("fp32", "bf16")]
    return {"pool": pool, "top_b": b, "top_b_overlap": len(top[0] & top[1]) / b,
            "spearman": _spearman(scores["fp32"], scores["bf16"]),
            "max_diff_rel_to_max": float((scores["bf16"] - scores["fp32"]).abs().max()
                                         / scores["fp32"].abs().max()),
            "fp32_s": scores["fp32_s"], "bf16_s": scores["bf16_s"]}


# --- per-layer profile (one process, medians of interleaved repeats) ---------------------------

def _median_ms(fn, repeats: int, sync) -> float:
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _profile(cfg: dict, device: str, repeats: int) -> dict:
    """Where the fast path's time goes: forward, train and fast end to end; each covered layer's
    rule time inside the scoring pass, grouped by kind; and for every convolution, both weight
    forms and the patches alone on the layer's own (A, G), against the form the crossover picks;
    the vmap fallback for one layer's parameters."""
    import torch
    import torch.nn.functional as F
    from raydal.scoring.grads import _select_params, conv, fallback, onepass
    from raydal.scoring.grads.registry import use_gram

    model, x = _setup(cfg, device)
    g_L = {k: torch.randn_like(p) * 1e-2 for k, p in _select_params(model, "all").items()}
    names = {m: n for n, m in model.named_modules()}
    rule_ms: dict[str, float] = {}
    original = onepass._Site._terms
    with torch.no_grad():
        yhat = model(x).argmax(1)
    params = {k: p.detach() for k, p in model.named_parameters()}

    def losses(p):
        return F.cross_entropy(torch.func.functional_call(model, p, (x,)), yhat,
                               reduction="none")

    def jvp_inner():  # the candidate lever: every <g_L, g_u> from one forward-mode pass, (B,)
        torch.func.jvp(losses, (params,), ({k: g_L[k] for k in params},))

    sync = _sync(device)

    def timed(site, a, version, g):
        sync()
        start = time.perf_counter()
        original(site, a, version, g)
        sync()
        m = site.module
        kind = type(m).__name__
        if isinstance(m, torch.nn.Conv2d):
            t, o, i = g[0, 0].numel(), m.out_channels // m.groups, m.weight[0].numel()
            form = "gram" if use_gram(t, o, i, site.wanted["weight"] is not None) \
                else "materialised"
            kind += (" 1x1 " if conv._pointwise(m) else " ") + form
        rule_ms[kind] = rule_ms.get(kind, 0.0) + (time.perf_counter() - start) * 1e3

    runners = {**_runners(model, x), "jvp_inner_products": jvp_inner}
    totals: dict[str, list] = {k: [] for k in ("forward", "train", "fast", "fast_norm",
                                               "jvp_inner_products")}
    rules: dict[str, dict] = {}
    onepass._Site._terms = timed
    try:
        for i in range(repeats + 1):
            for name in totals:
                rule_ms.clear()
                sync()
                start = time.perf_counter()
                runners[name]()
                sync()
                if i:
                    totals[name].append((time.perf_counter() - start) * 1e3)
                if name.startswith("fast"):
                    rules[name] = dict(sorted(rule_ms.items(), key=lambda kv: -kv[1]))
    finally:
        onepass._Site._terms = original
    out = {k: statistics.median(v) for k, v in totals.items()}
    out["rules_last_pass_ms"] = rules

    # every convolution's (A, G), then both weight forms in isolation
    captured = []

    def capture(m, args, y):
        row = [m, args[0].detach(), None]
        captured.append(row)
        y.register_hook(lambda g: row.__setitem__(2, g))

    hooks = [m.register_forward_hook(capture) for m in model.modules()
             if isinstance(m, torch.nn.Conv2d)]
    xg = x.clone().requires_grad_()
    logits = model(xg)
    torch.autograd.grad(F.cross_entropy(logits, logits.argmax(1), reduction="sum"), xg)
    for h in hooks:
        h.remove()
    layers = []
    forms = {"gram": conv.gram_weight_terms, "materialised": conv.materialised_weight_terms}
    for m, a, g in captured:
        t, o, i = g[0, 0].numel(), m.out_channels // m.groups, m.weight[0].numel()
        row = {"layer": names[m], "T": t, "o": o, "i": i, "pointwise": conv._pointwise(m)}
        gram_fits = 2 * a.shape[0] * t * t * a.element_size() <= GRAM_PROFILE_MAX_BYTES
        for inner, suffix in ((True, ""), (False, "_norm")):  # fast, fast_norm
            v = g_L[names[m] + ".weight"] if inner else None
            row["picked" + suffix] = "gram" if use_gram(t, o, i, inner) else "materialised"
            for _ in range(2):  # interleaved; the second round is kept
                for form, terms in forms.items():
                    row[form + suffix + "_ms"] = (
                        _median_ms(lambda: terms(m, a, g, v), repeats, sync)
                        if form == "materialised" or gram_fits else None)
        row["patches_ms"] = _median_ms(lambda: conv.patches(m, a), repeats, sync)
        layers.append(row)
    out["conv_layers"] = layers
    last = names[captured[-1][0]] + ".weight"
    out["vmap_one_layer_ms"] = _median_ms(lambda: fallback.per_sample_terms(
        model, x, yhat, [last], g_L, 32, None, torch.float32), 1, sync)
    return out


def _profile_report(cfg: dict, p: dict) -> str:
    fwd = p["forward"]
    lines = [f"{cfg['model']} @ {cfg['img']} px, batch {cfg['batch']}: forward {fwd:.0f} ms, "
             f"train {p['train'] / fwd:.2f}x, " + ", ".join(
                 f"{k} {p[k] / fwd:.2f}x forward ({p[k] / p['train']:.2f} training steps)"
                 for k in ("fast", "fast_norm", "jvp_inner_products")),
             *(f"  rule time in one {k} pass (x forward): " + ", ".join(
                 f"{kind} {v / fwd:.2f}" for kind, v in rules.items())
               for k, rules in p["rules_last_pass_ms"].items()),
             f"  vmap fallback for one layer ({p['conv_layers'][-1]['layer']}): "
             f"{p['vmap_one_layer_ms'] / fwd:.2f}x forward"]
    for suffix, name in (("", "fast"), ("_norm", "fast_norm")):
        picked = sum(r[r["picked" + suffix] + suffix + "_ms"] for r in p["conv_layers"])
        best = sum(min(r["gram" + suffix + "_ms"] or math.inf, r["materialised" + suffix + "_ms"])
                   for r in p["conv_layers"])
        lines.append(f"  convolutions' weight terms in {name}: picked forms {picked / fwd:.2f}x "
                     f"forward, best forms {best / fwd:.2f}x")
    lines.append(f"  patches alone {sum(r['patches_ms'] for r in p['conv_layers']) / fwd:.2f}x")
    ms = lambda r, k: "skipped (memory)" if r[k] is None else f"{r[k] / fwd:.3f}"  # noqa: E731
    lines += [f"    {r['layer']}{' (1x1)' if r['pointwise'] else ''}: T {r['T']}, o {r['o']}, "
              f"i {r['i']}, T(o+i)/oi {r['T'] * (r['o'] + r['i']) / (r['o'] * r['i']):.2f}: "
              f"fast gram {ms(r, 'gram_ms')} materialised {ms(r, 'materialised_ms')} -> "
              f"{r['picked']}; fast_norm gram {ms(r, 'gram_norm_ms')} materialised "
              f"{ms(r, 'materialised_norm_ms')} -> {r['picked_norm']}"
              for r in p["conv_layers"]]
    return "\n".join(lines)


# --- operator counts and a reusable timer ------------------------------------------------------

def _train_step(model, x, opt, bf16: bool = False):
    """One step as raydal/train.py runs it (train mode, mean loss, zero_grad, backward, step)."""
    import torch
    import torch.nn.functional as F
    from raydal.scoring.grads.common import autocast

    def step():
        model.train()
        with autocast(x, torch.bfloat16 if bf16 else None):
            out = model(x)
        loss = F.cross_entropy(out.float(), out.argmax(1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.eval()
    return step


def count_ops(model_name: str = "resnet50", img_size: int = 32, batch: int = 4,
              ip_weights=(0.0, 2.0)) -> dict:
    """torch.profiler CPU events of one scoring call per ip_weight and of the reference steps
    (see the module docstring for what is counted); ratios scorer / reference."""
    import timm
    import torch
    import torch.nn.functional as F
    from torch.profiler import ProfilerActivity, profile
    from raydal.scoring.grads import _select_params, dynamical_scores

    torch.manual_seed(0)
    model = timm.create_model(model_name, pretrained=False, num_classes=10).eval()
    x = torch.randn(batch, 3, img_size, img_size)
    g_L = {k: torch.randn_like(p) * 1e-2 for k, p in _select_params(model, "all").items()}

    def events(fn) -> int:
        fn()
        fn()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        return len(prof.events())

    def forward_backward():
        out = model(x)
        torch.autograd.grad(F.cross_entropy(out, out.argmax(1), reduction="sum"),
                            list(model.parameters()))

    params = [p for p in model.parameters() if p.requires_grad]
    refs = {"train_step_adam": events(_train_step(model, x, torch.optim.Adam(params, lr=1e-3))),
            "train_step_adam_foreach": events(_train_step(
                model, x, torch.optim.Adam(params, lr=1e-3, foreach=True))),
            "forward_backward": events(forward_backward)}
    scorer = {f"ip_weight_{ip:g}": events(lambda ip=ip: dynamical_scores(
        model, x, g_L=g_L if ip else None, ip_weight=ip)) for ip in ip_weights}
    return {"model": model_name, "img": img_size, "batch": batch, "torch": torch.__version__,
            "reference_events": refs, "scorer_events": scorer,
            "ratios": {s: {r: scorer[s] / refs[r] for r in refs} for s in scorer}}


def time_scorer(model_name: str, img_size: int, batch: int, device: str = "cpu",
                bf16: bool = False, cuda_graph: bool = False, ip_weight: float = 0.0,
                repeats: int = 10, warmup: int = 3, num_classes: int = 10,
                contractions: str | None = None, tf32: bool = False) -> dict:
    """Median ms of a forward pass (no_grad), a training step (forward, backward, Adam step, as
    raydal/train.py) and a scoring call (raydal.scoring.dynamical_scores, method "fast") of one
    random batch, timm model random init, interleaved round-robin; CUDA events on a GPU.
    bf16: autocast for all three; cuda_graph: the scorer replays a captured graph (GPU only);
    ip_weight 0 scores ||g_u||^2 alone, else a random g_L enters. contractions: the scorer's
    contraction_dtype, "bf16" or "fp32" (None: the scorer's default, bf16 under bf16 autocast,
    else fp32; "fp32" with bf16=True is the pre-2026-12-04 bf16 scorer); tf32: the scorer's
    allow_tf32 (cuBLAS TF32 matmuls for its float32 contractions; the forward pass and the
    training step keep torch's defaults). Also the ratios
    scorer / training step and scorer / forward, and the peak GPU memory of the scorer."""
    import timm
    import torch
    from raydal.hostmem import keep_freed_blocks
    from raydal.scoring.grads import _select_params, dynamical_scores
    from raydal.scoring.grads.common import autocast

    keep_freed_blocks()  # as raydal's scoring and training processes run
    torch.manual_seed(0)
    model = timm.create_model(model_name, pretrained=False, num_classes=num_classes)
    model = model.to(device).eval()
    x = torch.randn(batch, 3, img_size, img_size, device=device)
    g_L = {k: torch.randn_like(p) * 1e-2 for k, p in _select_params(model, "all").items()} \
        if ip_weight else None
    dtype = torch.bfloat16 if bf16 else None
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    state = {k: v.clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def forward():
        with autocast(x, dtype):
            model(x)

    ctype = {None: None, "bf16": torch.bfloat16, "fp32": torch.float32}[contractions]
    runners = {"forward": forward, "train_step": _train_step(model, x, opt, bf16),
               "scorer": lambda: dynamical_scores(model, x, g_L=g_L, ip_weight=ip_weight,
                                                  autocast_dtype=dtype, cuda_graph=cuda_graph,
                                                  contraction_dtype=ctype, allow_tf32=tf32)}
    cuda = torch.device(device).type == "cuda"
    times: dict[str, list] = {k: [] for k in runners}
    peak = None
    for i in range(warmup + repeats):
        for name, run in runners.items():
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                torch.cuda.synchronize()
                if name == "scorer" and i == warmup:
                    torch.cuda.reset_peak_memory_stats()
                start.record()
                run()
                end.record()
                torch.cuda.synchronize()
                ms = start.elapsed_time(end)
                if name == "scorer" and i == warmup:
                    peak = torch.cuda.max_memory_allocated() / 2**20
            else:
                t0 = time.perf_counter()
                run()
                ms = (time.perf_counter() - t0) * 1e3
            if i >= warmup:
                times[name].append(ms)
        model.load_state_dict(state)  # the training steps must not drift the scored weights
    out = {f"{k}_ms": statistics.median(v) for k, v in times.items()}
    out.update({"model": model_name, "img": img_size, "batch": batch, "device": str(device),
                "bf16": bf16, "cuda_graph": cuda_graph, "ip_weight": ip_weight,
                "contractions": contractions or ("bf16" if bf16 else "fp32"), "tf32": tf32,
                "repeats": repeats, "torch": torch.__version__,
                "scorer_vs_train_step": out["scorer_ms"] / out["train_step_ms"],
                "scorer_vs_forward": out["scorer_ms"] / out["forward_ms"],
                "scorer_peak_mib": peak})
    return out


# --- orchestration ------------------------------------------------------------------------------

def _in_subprocess(task: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(task)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {task} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _ratios_only(configs: list[dict], args, out: Path) -> None:
    """Round-robin ms per batch of every method but vmap, per config; prints x forward and
    x training step."""
    from raydal.hostmem import keep_freed_blocks

    rows = []
    for cfg in configs:
        slow = cfg["img"] >= 128 and args.device == "cpu"
        warmup, repeats = (1, 2) if args.quick else ((1, 5) if slow else (2, 7))
        ms = _in_subprocess({"cfg": cfg, "device": args.device, "interleaved": True,
                             "warmup": warmup, "repeats": repeats})
        rows.append({**{k: cfg[k] for k in ("model", "img", "batch")}, "repeats": repeats,
                     "ms_per_batch": ms})
        print(f"{cfg['model']}@{cfg['img']}/{cfg['batch']}: " + ", ".join(
            f"{k} {v:.0f} ms ({v / ms['forward']:.2f}x fwd, {v / ms['train']:.2f} train)"
            for k, v in ms.items()), flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": args.device, "quick": args.quick,
                               "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                               "platform": platform.platform(), "cpu_count": os.cpu_count(),
                               # what the timing processes set (same platform, same answer)
                               "keeps_freed_blocks": keep_freed_blocks(),
                               "load_average_at_end": os.getloadavg(), "results": rows},
                              indent=2))
    print(f"wrote {out}")


def _table(results: list[dict]) -> str:
    lines = ["| model | img | batch | method | ms/batch | x forward | x training step | "
             "speedup vs vmap | peak extra MiB | extra MiB/sample, in P-float gradients |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        m, fwd, vmap = r["methods"], r["methods"]["forward"]["ms_per_batch"], \
            r["methods"]["vmap"]["ms_per_batch"]
        train = m["train"]["ms_per_batch"]
        for name in METHODS:
            d = m[name]
            per_sample = d["peak_extra_mib"] / d["timed_samples"]
            note = f" (timed on {d['timed_samples']}, extrapolated)" if d["extrapolated"] else ""
            lines.append(f"| {r['model']} | {r['img']} | {r['batch']} | {name}{note} | "
                         f"{d['ms_per_batch']:.1f} | {d['ms_per_batch'] / fwd:.2f} | "
                         f"{d['ms_per_batch'] / train:.2f} | "
                         f"{vmap / d['ms_per_batch']:.1f} | {d['peak_extra_mib']:.0f} | "
                         f"{per_sample:.1f} ({per_sample * 2**20 / (4 * d['params']):.3f}) |")
    return "\n".join(lines)


def _goals(results: list[dict]) -> list[str]:
    out = []
    for r in results:
        m = r["methods"]
        fwd = m["forward"]["ms_per_batch"]
        fast, vmap, head, train, norm = (m[k]["ms_per_batch"] for k in
                                         ("fast", "vmap", "head", "train", "fast_norm"))
        train_mem, fast_mem = m["train"]["peak_extra_mib"], m["fast"]["peak_extra_mib"]
        batch_by_params = r["batch"] * 4 * m["fast"]["params"] / 2**20
        checks = [
            *((f"{name} <= {GOALS['fast_vs_train_max']} training steps", t / train,
               t / train <= GOALS["fast_vs_train_max"]) for name, t in (("fast", fast),
                                                                         ("fast_norm", norm))),
            (f"fast <= {GOALS['fast_vs_forward_max']}x forward", fast / fwd,
             fast / fwd <= GOALS["fast_vs_forward_max"]),
            (f"fast >= {GOALS['fast_speedup_vs_vmap_min']}x faster than vmap", vmap / fast,
             vmap / fast >= GOALS["fast_speedup_vs_vmap_min"]),
            (f"head >= {GOALS['head_throughput_vs_forward_min']}x inference throughput",
             fwd / head, fwd / head >= GOALS["head_throughput_vs_forward_min"]),
            (f"memory: fast peak extra / training step's <= {GOALS['fast_memory_vs_train_max']} "
             f"(activation-bound, no B x P term; B x P would be {batch_by_params:.0f} MiB)",
             fast_mem / train_mem, fast_mem / train_mem <= GOALS["fast_memory_vs_train_max"]),
        ]
        out += [f"- {r['model']}@{r['img']}: {name}: {value:.2f} -> {'MET' if ok else 'NOT MET'}"
                for name, value, ok in checks]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--profile", action="store_true",
                        help="per-layer breakdown of the fast path instead of the method table")
    parser.add_argument("--model", choices=[c["model"] for c in CONFIGS],
                        help="only this model's configuration")
    parser.add_argument("--ratios-only", action="store_true",
                        help="only the round-robin timing of every method but vmap")
    parser.add_argument("--ops", action="store_true",
                        help="profiler event counts of a scoring call vs a training step")
    parser.add_argument("--channels-last", action="store_true",
                        help="model and inputs in channels_last memory format")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        task = json.loads(args.worker)
        if task.get("interleaved"):
            result = _interleaved(task["cfg"], task["device"], task["warmup"], task["repeats"])
        elif task.get("profile"):
            result = _profile(task["cfg"], task["device"], task["repeats"])
        elif task.get("pool"):
            result = _agreement(task["cfg"], task["device"], task["pool"])
        else:
            result = _worker(task["cfg"], task["method"], task["device"], task["warmup"],
                             task["repeats"])
        print(json.dumps(result))
        return
    configs = [{**cfg, "channels_last": args.channels_last}
               for cfg in (QUICK if args.quick else CONFIGS)
               if args.model in (None, cfg["model"])]
    results_dir = QUICK_DIR if args.quick else Path(__file__).parent / "results"
    if args.ops:
        result = count_ops(batch=2 if args.quick else 4)
        for name, n in result["scorer_events"].items():
            print(f"scorer {name}: {n} events = " + ", ".join(
                f"{r:.2f}x {k} ({result['reference_events'][k]})"
                for k, r in result["ratios"][name].items()))
        out = args.out or results_dir / "scoring_ops.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
        print(f"wrote {out}")
        return
    if args.ratios_only:
        out = args.out or results_dir / f"scoring_ratios_{args.device}.json"
        _ratios_only(configs, args, out)
        return
    if args.profile:
        profiles = [{**cfg, "profile": _in_subprocess({"cfg": cfg, "device": args.device,
                                                       "profile": True,
                                                       "repeats": 1 if args.quick else 3})}
                    for cfg in configs]
        out = args.out or results_dir / f"scoring_profile_{args.device}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"device": args.device, "quick": args.quick,
                                   "cpu_count": os.cpu_count(), "profiles": profiles}, indent=2))
        print("\n".join(_profile_report(p, p["profile"]) for p in profiles))
        print(f"\nwrote {out}")
        return
    results = []
    for cfg in configs:
        slow = cfg["img"] >= 128 and args.device == "cpu"
        warmup, repeats = (1, 2) if args.quick else ((1, 3) if slow else (2, 5))
        methods = {}
        for method in METHODS:
            methods[method] = _in_subprocess({"cfg": cfg, "method": method, "device": args.device,
                                              "warmup": warmup if method != "vmap" else 1,
                                              "repeats": repeats if method != "vmap" else 1})
            print(f"{cfg['model']}@{cfg['img']} {method}: {methods[method]['ms_per_batch']:.1f} ms",
                  file=sys.stderr, flush=True)
        # the table's times: all methods but vmap round-robin in one process (ratios robust to
        # load drift); the per-method processes above give the memory and the isolated times
        timing = _in_subprocess({"cfg": cfg, "device": args.device, "interleaved": True,
                                 "warmup": warmup, "repeats": repeats})
        for method, ms in timing.items():
            methods[method]["isolated_ms_per_batch"] = methods[method]["ms_per_batch"]
            methods[method]["ms_per_batch"] = ms
        pool = (32 if args.quick else (128 if slow else 512))
        agreement = _in_subprocess({"cfg": cfg, "device": args.device, "pool": pool})
        results.append({**{k: cfg[k] for k in ("model", "img", "batch")}, "methods": methods,
                        "bf16_agreement": agreement})
    report = {"device": args.device, "quick": args.quick, "channels_last": args.channels_last,
              "platform": platform.platform(),
              "cpu_count": os.cpu_count(), "goals": GOALS, "results": results}
    out = args.out or results_dir / f"scoring_throughput_{args.device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(_table(results))
    print("\nbf16 autocast vs fp32 (fast path):")
    for r in results:
        a = r["bf16_agreement"]
        print(f"- {r['model']}@{r['img']}: pool {a['pool']}, top-{a['top_b']} overlap "
              f"{a['top_b_overlap']:.2f}, Spearman {a['spearman']:.4f}, max |diff| / max |score| "
              f"{a['max_diff_rel_to_max']:.4f}, time fp32 {a['fp32_s']:.1f}s bf16 {a['bf16_s']:.1f}s")
    print("\nGoals:")
    print("\n".join(_goals(results)))
    if any(d["extrapolated"] for r in results for d in r["methods"].values()):
        print("\nvmap rows marked 'extrapolated' were timed on fewer samples and scaled per sample "
              "to the batch (too slow on this device otherwise); their memory is for those samples.")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
