"""dynamicAL scores: the fast exact path and the vmap reference equal a plain per-sample autograd
loop in float64 on hand-made nets and timm resnet / mobilenetv3 / ViT (random init, no downloads)."""
import logging
import warnings

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from raydal.scoring.base import create_strategy
from raydal.scoring.dynamical import DynamicAL
from raydal.scoring import grads
from raydal.scoring.grads import dynamical_scores, labeled_gradient

RTOL = 1e-6


def naive_scores(model, x, g_L, names, ip_weight=2.0):
    """One autograd call per sample: ||g_u||^2 + ip_weight <g_L, g_u> over the named params."""
    model.eval()
    params = dict(model.named_parameters())
    out = []
    for i in range(len(x)):
        logits = model(x[i:i + 1])
        loss = F.cross_entropy(logits, logits.argmax(1))
        grads = torch.autograd.grad(loss, [params[n] for n in names], allow_unused=True)
        grads = {n: g for n, g in zip(names, grads) if g is not None}
        out.append(sum((g.double() ** 2).sum() for g in grads.values())
                   + ip_weight * sum((g.double() * g_L[n].double()).sum() for n, g in grads.items()))
    return torch.stack(out)


def assert_close(actual, expected):
    assert actual.dtype == torch.float64 and actual.shape == expected.shape
    err = ((actual - expected).abs().max() / expected.abs().max()).item()
    assert err <= RTOL, f"relative error {err:.2e}"


def randomize_norm_stats(model):
    """Non-trivial BN running statistics and affine parameters (fresh init has mean 0, var 1)."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)):
                if getattr(m, "running_mean", None) is not None:
                    m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=gen) - 0.5)
                    m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
                if m.weight is not None:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.rand(m.bias.shape, generator=gen) - 0.5)
    return model


class TinyNet(nn.Module):
    """conv + BN (eval) + in-place ReLU + linear."""

    def __init__(self, in_chans=1):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, 6, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.act = nn.ReLU(inplace=True)
        self.fc = nn.Linear(6 * 16 * 16, 10)

    def forward(self, x):
        return self.fc(self.act(self.bn(self.conv(x))).flatten(1))


class ZooNet(nn.Module):
    """Every other rule, each conv/linear weight in the Gram or the materialised form: grouped
    dilated Conv2d with reflect padding, pointwise Conv2d, strided dilated Conv2d with a
    non-square kernel and circular padding,
    Conv1d with 'same' and replicate padding, BatchNorm1d, GroupNorm, LayerNorm and Linear over
    tokens, Embedding with padding_idx and repeated indices, and a loose batch-broadcast
    parameter."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=2, dilation=2, groups=2, padding_mode="reflect")
        self.gn = nn.GroupNorm(4, 8)
        self.pointwise = nn.Conv2d(8, 8, 1)
        self.conv_gram = nn.Conv2d(8, 32, (3, 2), stride=8, padding=(2, 1), dilation=(2, 1),
                                   padding_mode="circular")
        self.conv1d = nn.Conv1d(32, 6, 4, padding="same", bias=False)
        self.bn1d = nn.BatchNorm1d(6)
        self.conv1d_gram = nn.Conv1d(6, 12, 5, stride=4, padding=2, padding_mode="replicate")
        self.ln = nn.LayerNorm(12)
        self.tok = nn.Linear(12, 5)
        self.emb = nn.Embedding(7, 5, padding_idx=0)
        self.offset = nn.Parameter(torch.randn(1, 1, 5))
        self.head = nn.Linear(5, 10)

    def forward(self, x):
        h = self.pointwise(torch.tanh(self.gn(self.conv(x))))      # (B, 8, 32, 32)
        h = torch.tanh(self.conv_gram(h)).flatten(2)               # (B, 32, 4 x 5)
        h = self.conv1d_gram(torch.tanh(self.bn1d(self.conv1d(h))))  # (B, 12, 5)
        h = self.tok(self.ln(h.transpose(1, 2)))                   # (B, 5, 5)
        ids = (x[:, 0, 0, :].abs() * 3).long().clamp(max=6)        # (B, 32): repeats, zeros
        h = h.mean(1, keepdim=True) + self.emb(ids).sum(1, keepdim=True) + self.offset
        return self.head(torch.tanh(h[:, 0]))


class Scale(nn.Module):
    """A parameter used in a way no rule covers (a leaf module with its own maths)."""

    def __init__(self, channels):
        super().__init__()
        self.gain = nn.Parameter(torch.rand(channels) + 0.5)

    def forward(self, x):
        return x * self.gain.view(1, -1, 1, 1) ** 2


def timm_model(name, **kwargs):
    return timm.create_model(name, pretrained=False, num_classes=10, **kwargs)


MODELS = {
    "tiny": (lambda: TinyNet(in_chans=1), 1),
    "zoo": (ZooNet, 4),
    "resnet18": (lambda: timm_model("resnet18", in_chans=3), 3),
    "mobilenetv3": (lambda: timm_model("mobilenetv3_small_050", in_chans=1), 1),
    "vit": (lambda: timm_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2,
                               in_chans=3), 3),
}


@pytest.fixture(scope="module", params=list(MODELS))
def case(request):
    """(model in float64, pool batch, labeled x, labeled y)."""
    make, chans = MODELS[request.param]
    torch.manual_seed(0)
    model = randomize_norm_stats(make()).double()
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(5, chans, 32, 32, generator=gen, dtype=torch.float64)
    lx = torch.randn(6, chans, 32, 32, generator=gen, dtype=torch.float64)
    ly = torch.randint(0, 10, (6,), generator=gen)
    return model, x, lx, ly


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("params", ["all", "head"])
def test_fast_and_vmap_equal_naive(case, params, monkeypatch):
    model, x, lx, ly = case
    g_L = labeled_gradient(model, lx, ly, batch_size=4, params=params)
    expected = naive_scores(model, x, g_L, list(g_L))
    with monkeypatch.context() as patch:  # every layer here has a rule: no fallback allowed
        patch.setattr(grads.fallback, "per_sample_terms", lambda *a: pytest.fail(f"fallback used: {a[3]}"))
        fast = dynamical_scores(model, x, g_L=g_L, params=params)
    assert_close(fast, expected)
    with warnings.catch_warnings():  # vmap over SDPA warns about a missing batching rule
        warnings.simplefilter("ignore", UserWarning)
        assert_close(dynamical_scores(model, x, g_L=g_L, params=params, method="vmap",
                                      chunk_size=2), expected)


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("crossover", [0.0, float("inf")], ids=["materialised", "gram"])
@pytest.mark.parametrize("ip_weight", [2.0, 0.0])
def test_each_weight_form_equals_naive(case, crossover, ip_weight, monkeypatch):
    """Every conv / linear weight forced into one form (the crossover decides per layer shape,
    so the default alone leaves some shapes in one form only), with and without <g_L, g_u>."""
    model, x, lx, ly = case
    monkeypatch.setattr(grads.registry, "GRAM_CROSSOVER", {"inner": crossover, "norm": crossover})
    g_L = labeled_gradient(model, lx, ly, batch_size=4)
    expected = naive_scores(model, x, g_L, list(g_L), ip_weight)
    assert_close(dynamical_scores(model, x, ip_weight=ip_weight, g_L=g_L), expected)


def test_head_params_are_the_classifier(case):
    model, x, lx, ly = case
    g_L = labeled_gradient(model, lx, ly, params="head")
    head = model.get_classifier() if hasattr(model, "get_classifier") else \
        [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    assert {id(p) for p in head.parameters()} == {id(dict(model.named_parameters())[n])
                                                  for n in g_L}


def test_head_closed_form():
    """||g_u||^2 = ||softmax(z) - e_yhat||^2 (||h||^2 + 1) on the last layer."""
    torch.manual_seed(0)
    model = TinyNet().double().eval()
    x = torch.randn(4, 1, 32, 32, dtype=torch.float64)
    h = model.act(model.bn(model.conv(x))).flatten(1)
    z = model.fc(h)
    r = torch.softmax(z, 1) - F.one_hot(z.argmax(1), 10)
    expected = (r ** 2).sum(1) * ((h ** 2).sum(1) + 1)
    assert_close(dynamical_scores(model, x, ip_weight=0.0, params="head"), expected.detach())


def test_labeled_gradient_is_summed_loss_gradient():
    torch.manual_seed(0)
    model = TinyNet().double()
    lx, ly = torch.randn(7, 1, 32, 32, dtype=torch.float64), torch.randint(0, 10, (7,))
    g_L = labeled_gradient(model, lx, ly, batch_size=3)
    model.eval()
    expected = torch.autograd.grad(F.cross_entropy(model(lx), ly, reduction="sum"),
                                   list(model.parameters()))
    for g, e in zip(g_L.values(), expected):
        torch.testing.assert_close(g, e)


def test_model_left_unchanged():
    torch.manual_seed(0)
    model = timm_model("mobilenetv3_small_050", in_chans=1).double()
    model.train()
    model.blocks[0].eval()  # a mixed state must come back as it was
    before = {n: t.clone() for n, t in model.state_dict().items()}
    x = torch.randn(3, 1, 32, 32, dtype=torch.float64)
    dynamical_scores(model, x, x, torch.tensor([1, 2, 3]))
    assert model.training and not model.blocks[0].training and model.blocks[1].training
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    for n, t in model.state_dict().items():
        assert torch.equal(t, before[n]), n


def test_fallback_is_exact_and_warns_once(caplog, monkeypatch):
    from raydal.scoring.grads import common
    monkeypatch.setattr(common, "_warned", set())  # earlier tests may have warned for Scale
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), Scale(4), nn.PReLU(4), nn.Flatten(),
                          nn.Linear(4 * 8 * 8, 10)).double()
    x = torch.randn(5, 1, 8, 8, dtype=torch.float64)
    lx, ly = torch.randn(4, 1, 8, 8, dtype=torch.float64), torch.randint(0, 10, (4,))
    g_L = labeled_gradient(model, lx, ly)
    expected = naive_scores(model, x, g_L, list(g_L))
    with caplog.at_level(logging.WARNING, logger="raydal"):
        assert_close(dynamical_scores(model, x, g_L=g_L, chunk_size=2), expected)
        assert_close(dynamical_scores(model, x, g_L=g_L), expected)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("Scale" in m for m in messages) == 1, messages
    assert all("no per-sample gradient rule" in m for m in messages)


def test_layer_behind_a_parameter_only_path_is_exact():
    """The conv's input needs grad only through a fallback parameter (no probe behind it): the
    backward pass misses the conv until the probe is on every site."""
    torch.manual_seed(0)
    model = nn.Sequential(Scale(2), nn.Conv2d(2, 4, 3, padding=1), nn.Tanh(), nn.Flatten(),
                          nn.Linear(4 * 8 * 8, 10)).double()
    x = torch.randn(5, 2, 8, 8, dtype=torch.float64)
    g_L = labeled_gradient(model, x[:3], torch.tensor([0, 1, 2]))
    assert_close(dynamical_scores(model, x, g_L=g_L), naive_scores(model, x, g_L, list(g_L)))


def test_reused_module_falls_back_exactly():
    torch.manual_seed(0)

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(6, 6), nn.Linear(6, 10)

        def forward(self, x):
            return self.fc2(torch.tanh(self.fc1(torch.tanh(self.fc1(x)))))

    model = Twice().double()
    x = torch.randn(5, 6, dtype=torch.float64)
    g_L = labeled_gradient(model, x[:3], torch.tensor([0, 1, 2]))
    assert_close(dynamical_scores(model, x, g_L=g_L), naive_scores(model, x, g_L, list(g_L)))


def test_ip_weight_and_inputs():
    torch.manual_seed(0)
    model = TinyNet().double()
    x = torch.randn(4, 1, 32, 32, dtype=torch.float64)
    lx, ly = torch.randn(3, 1, 32, 32, dtype=torch.float64), torch.tensor([0, 1, 2])
    g_L = labeled_gradient(model, lx, ly)
    names = list(g_L)
    assert_close(dynamical_scores(model, x, ip_weight=0.0), naive_scores(model, x, g_L, names, 0.0))
    assert_close(dynamical_scores(model, x, lx, ly, ip_weight=0.5),
                 naive_scores(model, x, g_L, names, 0.5))
    with pytest.raises(ValueError, match="g_L or both labeled_x and labeled_y"):
        dynamical_scores(model, x)
    with pytest.raises(ValueError, match="g_L lacks"):
        dynamical_scores(model, x, g_L={"fc.bias": g_L["fc.bias"]})
    with pytest.raises(ValueError, match="method must be"):
        dynamical_scores(model, x, g_L=g_L, method="exact")
    with pytest.raises(ValueError, match="params must be"):
        dynamical_scores(model, x, g_L=g_L, params="last")


def test_float32_and_bf16_autocast_track_float64():
    torch.manual_seed(0)
    model = timm_model("resnet18", in_chans=1)
    x = torch.randn(8, 1, 32, 32)
    g_L = labeled_gradient(model, x, torch.arange(8))
    s32 = dynamical_scores(model, x, g_L=g_L)
    s64 = dynamical_scores(model.double(), x.double(), g_L={n: g.double() for n, g in g_L.items()})
    assert s32.dtype == torch.float64
    assert ((s32 - s64).abs().max() / s64.abs().max()) < 1e-4
    sbf = dynamical_scores(model.float(), x, g_L=g_L, autocast_dtype=torch.bfloat16)
    assert torch.isfinite(sbf).all()
    assert torch.corrcoef(torch.stack([sbf, s32]))[0, 1] > 0.9


def test_strategy_matches_function():
    torch.manual_seed(0)
    model = TinyNet().double()
    x = torch.randn(4, 1, 32, 32, dtype=torch.float64)
    lx, ly = torch.randn(5, 1, 32, 32, dtype=torch.float64), torch.randint(0, 10, (5,))
    batches = [(lx[:3], ly[:3]), (lx[3:], ly[3:])]  # prepare sums over streamed batches
    assert create_strategy("dynamicAL").ip_weight == 2.0  # the paper's score by default
    gradnorm = create_strategy("gradnorm")  # ||g_u||^2 alone: no g_L, no labels
    assert not gradnorm.needs_labeled and gradnorm.ip_weight == 0
    assert_close(gradnorm.score(model, x, ["a"] * 4, None),
                 dynamical_scores(model, x, ip_weight=0.0))
    with pytest.raises(ValueError, match="ip_weight is 0 for gradnorm.*use strategy dynamicAL"):
        create_strategy("gradnorm", ip_weight=2.0)
    strategy = create_strategy("dynamicAL")
    assert isinstance(strategy, DynamicAL) and strategy.needs_labeled
    context = strategy.prepare(model, batches)
    assert all(t.device.type == "cpu" for t in context.values())
    scores = strategy.score(model, x, [str(i) for i in range(4)], context)
    assert_close(scores, dynamical_scores(model, x, lx, ly))

    mean = create_strategy("dynamicAL", ip_weight=2.0, gradient_reduction="mean", method="vmap",
                           chunk_size=3)
    g_mean = mean.prepare(model, batches)
    for n in context:
        torch.testing.assert_close(g_mean[n] * 5, context[n])
    assert_close(mean.score(model, x, ["a"] * 4, g_mean),
                 naive_scores(model, x, context, list(context), ip_weight=2.0 / 5))

    head = create_strategy("dynamicAL", params="head", ip_weight=1.0)
    g_head = head.prepare(model, batches)
    assert set(g_head) == {"fc.weight", "fc.bias"}
    assert_close(head.score(model, x, ["a"] * 4, g_head),
                 naive_scores(model, x, g_head, list(g_head), ip_weight=1.0))


@pytest.mark.parametrize("options, message", [
    ({"ip_weight": -1.0}, "ip_weight must be a float >= 0, got -1.0"),
    ({"ip_weight": "2"}, "ip_weight must be a float >= 0"),
    ({"params": "last"}, "params must be one of \\['all', 'head'\\], got 'last'"),
    ({"method": "naive"}, "method must be one of"),
    ({"gradient_reduction": "max"}, "gradient_reduction must be one of"),
    ({"chunk_size": 0}, "chunk_size must be a positive int, got 0"),
    ({"mixed_precision": "yes"}, "mixed_precision must be a bool"),
    ({"ip_wieght": 1.0}, "Did you mean 'ip_weight'"),
])
def test_option_validation(options, message):
    with pytest.raises(ValueError, match=message):
        create_strategy("dynamicAL", **options)


class Cube(torch.autograd.Function):
    """x ** 3 as an old-style custom autograd.Function: torch.func.vmap cannot run it."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x ** 3

    @staticmethod
    def backward(ctx, g):
        x, = ctx.saved_tensors
        return 3 * x ** 2 * g


class CustomFunctionNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.scale = nn.Conv2d(1, 4, 3, padding=1), Scale(4)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(Cube.apply(self.scale(torch.tanh(self.conv(x)))).flatten(1))


def test_custom_autograd_function_falls_back_to_an_exact_loop(caplog):
    """A parameter without a rule in a model vmap cannot run: per-sample autograd loop, exact,
    with a warning that says so (both methods)."""
    torch.manual_seed(0)
    model = CustomFunctionNet().double()
    x = torch.randn(5, 1, 8, 8, dtype=torch.float64)
    lx, ly = torch.randn(4, 1, 8, 8, dtype=torch.float64), torch.randint(0, 10, (4,))
    g_L = labeled_gradient(model, lx, ly)
    expected = naive_scores(model, x, g_L, list(g_L))
    with caplog.at_level(logging.WARNING, logger="raydal"):
        assert_close(dynamical_scores(model, x, g_L=g_L, chunk_size=2), expected)
        assert_close(dynamical_scores(model, x, g_L=g_L, method="vmap", chunk_size=2), expected)
    loop = [r.getMessage() for r in caplog.records if "autograd loop" in r.getMessage()]
    assert len(loop) == 1 and "CustomFunctionNet" in loop[0] and "exact" in loop[0], loop


def test_register_rule_covers_a_custom_layer(monkeypatch):
    """A user's rule replaces the fallback for its type and is exact; a subclass that overrides
    forward does not inherit it."""
    monkeypatch.setattr(grads.registry, "_RULES", dict(grads.registry._RULES))

    @grads.register_rule(Scale, params=("gain",))
    def scale_terms(m, a, g, wanted):
        per_sample = (g * a * 2 * m.gain.view(1, -1, 1, 1)).sum((2, 3))  # (B, C)
        return [grads.flat_terms(per_sample, wanted["gain"])]

    class Cubed(Scale):
        def forward(self, x):
            return x * self.gain.view(1, -1, 1, 1) ** 3

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), Scale(4), nn.Tanh(), nn.Flatten(),
                          nn.Linear(4 * 8 * 8, 10)).double()
    x = torch.randn(5, 1, 8, 8, dtype=torch.float64)
    g_L = labeled_gradient(model, x[:3], torch.tensor([0, 1, 2]))
    expected = naive_scores(model, x, g_L, list(g_L))
    with monkeypatch.context() as patch:
        patch.setattr(grads.fallback, "per_sample_terms",
                      lambda *a: pytest.fail(f"fallback used: {a[3]}"))
        assert_close(dynamical_scores(model, x, g_L=g_L), expected)
    assert grads.registry.rule_for(Cubed(4)) is None and grads.registry.rule_for(Scale(4))
    with pytest.raises(TypeError, match="nn.Module subclasses"):
        grads.register_rule(int)
