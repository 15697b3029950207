"""Tests for the Plan compiler, its plaintext reference and plan storage.

The central oracle is :func:`naive_run`, a deliberately naive interpreter over Python integers
written from the op semantics in the ``safenet.plan.ir`` module docstring. ``Plan.reference``
must agree with it exactly (integer equality) on every op kind, including the wrap-around mod p
and the big-number code paths.
"""

from __future__ import annotations

import copy
import io
import itertools
import json
import math
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

from safenet.field import DELPHI_PRIME, Field, is_probable_prime
from safenet.nn.surgery import LayerSpec, activations, calibrate, convert, set_blend, set_layers
from safenet.nn.zoo import build_model
from safenet.plan import KINDS, Plan, RangeStats, UnsupportedLayerError, compile_model
from safenet.plan import reference as reference_mod

MERSENNE_61 = 2**61 - 1


# =============================================================================================
# The naive interpreter
# =============================================================================================


def _centre(v: int, p: int) -> int:
    r = v % p
    return r - p if r > p // 2 else r


def _round_shift(v: int, k: int) -> int:
    """floor((v + 2^(k-1)) / 2^k), round half up; a non-positive k multiplies by 2^-k."""
    if k <= 0:
        return v * 2 ** (-k)
    return (v + 2 ** (k - 1)) // 2**k


def _obj(shape: tuple[int, ...]) -> np.ndarray:
    return np.empty(shape, dtype=object)


def _naive_conv(x: np.ndarray, op, p: int) -> np.ndarray:
    w, b = op.arrays["weight"], op.arrays["bias"]
    sh, sw = op.attrs.stride
    ph, pw = op.attrs.padding
    groups = op.attrs.groups
    cin, h, wd = x.shape
    cout, cin_g, kh, kw = w.shape
    assert cin_g * groups == cin and cout % groups == 0
    assert list(op.attrs.kernel) == [kh, kw]
    cout_g = cout // groups
    oh, ow = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
    out = _obj((cout, oh, ow))
    for o in range(cout):
        g = o // cout_g
        for i in range(oh):
            for j in range(ow):
                acc = int(b[o])
                for c in range(cin_g):
                    for u in range(kh):
                        for v in range(kw):
                            y, z = i * sh - ph + u, j * sw - pw + v
                            if 0 <= y < h and 0 <= z < wd:
                                acc += int(w[o, c, u, v]) * int(x[g * cin_g + c, y, z])
                out[o, i, j] = _centre(acc, p)
    return out


def _naive_linear(x: np.ndarray, op, p: int) -> np.ndarray:
    w, b = op.arrays["weight"], op.arrays["bias"]
    assert x.shape == (w.shape[1],)
    out = _obj((w.shape[0],))
    for o in range(w.shape[0]):
        acc = int(b[o])
        for i in range(w.shape[1]):
            acc += int(w[o, i]) * int(x[i])
        out[o] = _centre(acc, p)
    return out


def _naive_sumpool(x: np.ndarray, op, p: int) -> np.ndarray:
    k, s = op.attrs.kernel, op.attrs.stride
    c, h, w = x.shape
    oh, ow = (h - k) // s + 1, (w - k) // s + 1
    out = _obj((c, oh, ow))
    for ch in range(c):
        for i in range(oh):
            for j in range(ow):
                acc = 0
                for u in range(k):
                    for v in range(k):
                        acc += int(x[ch, i * s + u, j * s + v])
                out[ch, i, j] = _centre(acc, p)
    return out


def _naive_activation(x: np.ndarray, op, p: int) -> np.ndarray:
    k = op.attrs.shift
    mask = op.arrays["relu_mask"]
    degree, q = op.attrs.degree, op.attrs.poly_shift
    coef = op.arrays.get("coefficients")
    assert len(mask) == x.shape[0]
    out = _obj(x.shape)
    for idx in itertools.product(*(range(n) for n in x.shape)):
        ch = idx[0]
        big_x = _round_shift(int(x[idx]), k)
        if mask[ch]:
            y = max(big_x, 0)
        else:
            row = coef[ch] if coef.shape[0] > 1 else coef[0]
            assert len(row) == degree + 1
            kp = k if op.attrs.poly_in_shift is None else op.attrs.poly_in_shift
            xp = _round_shift(int(x[idx]), kp)
            poly = sum(int(row[j]) * xp**j for j in range(degree + 1))
            y = _round_shift(_centre(poly, p), q)
        out[idx] = _centre(y, p)
    return out


def _naive_one(plan: Plan, x: np.ndarray) -> np.ndarray:
    p = plan.field.p
    vals: list[np.ndarray] = []
    for op in plan.ops:
        ins = [vals[j] for j in op.inputs]
        if op.kind == "input":
            out = _obj(x.shape)
            for idx in np.ndindex(x.shape):
                out[idx] = _centre(int(x[idx]), p)
        elif op.kind == "conv":
            out = _naive_conv(ins[0], op, p)
        elif op.kind == "linear":
            out = _naive_linear(ins[0], op, p)
        elif op.kind == "sumpool":
            out = _naive_sumpool(ins[0], op, p)
        elif op.kind == "rescale":
            m = int(op.attrs.multiplier)
            out = _obj(ins[0].shape)
            for idx in np.ndindex(out.shape):
                out[idx] = _centre(int(ins[0][idx]) * m, p)
        elif op.kind == "add":
            out = _obj(ins[0].shape)
            for idx in np.ndindex(out.shape):
                acc = 0
                for t, s in zip(ins, op.attrs.shifts, strict=True):
                    acc += int(t[idx]) * 2**s
                out[idx] = _centre(acc, p)
        elif op.kind == "flatten":
            out = ins[0].reshape(-1)
        elif op.kind == "truncate":
            out = _obj(ins[0].shape)
            for idx in np.ndindex(out.shape):
                out[idx] = _centre(_round_shift(int(ins[0][idx]), op.attrs.shift), p)
        elif op.kind == "activation":
            out = _naive_activation(ins[0], op, p)
        else:
            raise AssertionError(f"unknown op {op.kind}")
        assert tuple(out.shape) == tuple(op.shape), (op.kind, out.shape, op.shape)
        vals.append(out)
    return vals[-1]


def naive_run(plan: Plan, x_int: np.ndarray) -> np.ndarray:
    """Batch of integer inputs (N, *input_shape) -> int64 outputs (centred mod p)."""
    outs = [_naive_one(plan, np.asarray(xi, dtype=object)) for xi in x_int]
    res = np.array([o.astype(object) for o in outs], dtype=object)
    half = plan.field.half
    assert all(abs(int(v)) <= half for v in res.ravel())
    return res.astype(np.int64)


def assert_matches_naive(plan: Plan, x: np.ndarray, *, encoded: bool = False) -> np.ndarray:
    """Plan.reference(x) == naive interpreter, exactly; returns the integer output."""
    x_int = np.asarray(x, dtype=np.int64) if encoded else plan.field.encode(x)
    got = plan.reference(x, encoded=encoded, decode=False)
    want = naive_run(plan, x_int)
    assert got.dtype == np.int64
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    return got


# =============================================================================================
# Small models
# =============================================================================================


def _randomise_bn(model: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0.0, 0.2, generator=g)
                m.running_mean.normal_(0.0, 0.2, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
    return model.eval()


def _float_out(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.eval().double()(torch.from_numpy(x).double()).numpy()


class ConvBNNet(nn.Module):
    """Convs with stride, padding, groups and batch-norm; flatten + linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 3, 3, 1, 1)
        self.bn1 = nn.BatchNorm2d(3)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(3, 3, 3, 2, 1, groups=3, bias=False)
        self.bn2 = nn.BatchNorm2d(3)
        self.conv3 = nn.Conv2d(3, 4, (2, 3), (1, 2), (0, 1), groups=1)
        self.fc = nn.Linear(4 * 2 * 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = self.conv3(x).relu()
        return self.fc(torch.flatten(x, 1))


class PoolNet(nn.Module):
    """2x2 pool settled before an activation, 3x3 pool folded into a linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 3, 3, 1, 1)
        self.pool1 = nn.AvgPool2d(2)  # 6 -> 3, then ReLU: power-of-two rescale
        self.conv2 = nn.Conv2d(3, 2, 1)
        self.pool2 = nn.AvgPool2d(3)  # 3 -> 1, folded (1/9) into fc
        self.fc = nn.Linear(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.pool1(x))
        x = torch.relu(self.conv2(x))
        return self.fc(self.pool2(x).view(x.size(0), -1))


class Pool3Net(nn.Module):
    """3x3 pool settled by a rescale (multiplier round(2^13 / 9)) before an activation."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, 1, 1)
        self.pool = nn.AvgPool2d(3)  # 6 -> 2
        self.pool2 = nn.AvgPool2d(2)  # 2 -> 1, the output: settled as a larger scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x))
        x = torch.relu(self.pool(x))
        return self.pool2(x)


class Pool3ConvNet(nn.Module):
    """Overlapping 3x3 pool (stride 1) folded into the next convolution."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(3, stride=1)  # 6 -> 4
        self.conv = nn.Conv2d(2, 2, 3)  # 4 -> 2
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(self.pool(x)))
        return self.fc(torch.flatten(self.gap(x), 1))


class ResidualNet(nn.Module):
    """A residual add of tensors at different scales (the block input and a conv output)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 2, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(2)
        self.conv2 = nn.Conv2d(2, 2, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(2)
        self.fc = nn.Linear(2 * 6 * 6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = torch.relu(out + x)
        return self.fc(out.flatten(1))


class ActNet(nn.Module):
    """Two activation sites (conv and linear) to be converted to ChannelActivation."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, 1, 1)
        self.act1 = nn.ReLU()
        self.pool = nn.AvgPool2d(2)
        self.flat = nn.Flatten()
        self.fc1 = nn.Linear(3 * 3 * 3, 4)
        self.act2 = nn.ReLU()
        self.fc2 = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.act1(self.conv(x)))
        return self.fc2(self.act2(self.fc1(self.flat(x))))


def _seeded(cls: type[nn.Module], seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return _randomise_bn(cls(), seed)


def _inputs(shape: tuple[int, ...], n: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1.5, 1.5, size=(n, *shape))


def _converted(per_channel: bool, seed: int = 0) -> nn.Module:
    """ActNet with half of act1 on a degree-2 polynomial and most of act2 on degree 3."""
    model = _seeded(ActNet, seed)
    x = torch.from_numpy(_inputs((2, 6, 6), n=16, seed=seed + 100)).float()
    gm = convert(model, x, per_channel=per_channel)
    names = list(activations(gm))
    assert names == ["act1", "act2"]
    set_layers(gm, {"act1": LayerSpec(0.34, 2), "act2": LayerSpec(0.75, 3)})
    calibrate(gm, [x])
    return gm.eval()


# =============================================================================================
# Plan.reference == naive interpreter on small compiled models
# =============================================================================================

SMALL_MODELS = {
    "convbn": (ConvBNNet, (2, 6, 6)),
    "pool": (PoolNet, (2, 6, 6)),
    "pool3": (Pool3Net, (1, 6, 6)),
    "pool3conv": (Pool3ConvNet, (2, 6, 6)),
    "residual": (ResidualNet, (2, 6, 6)),
}


@pytest.mark.parametrize("name", sorted(SMALL_MODELS))
def test_reference_matches_naive_and_float(name):
    cls, shape = SMALL_MODELS[name]
    model = _seeded(cls)
    plan = compile_model(model, shape)
    assert all(op.kind in KINDS for op in plan.ops)
    x = _inputs(shape)
    got = assert_matches_naive(plan, x)
    # and the plan computes the float model (fixed point at 8 fractional bits)
    decoded = plan.reference(x)
    np.testing.assert_array_equal(decoded, got / 2.0**plan.output_scale)
    np.testing.assert_allclose(decoded, _float_out(model, x), atol=0.01)
    # encoded inputs give the same result as real inputs
    enc = plan.field.encode(x)
    np.testing.assert_array_equal(plan.reference(enc, encoded=True, decode=False), got)


def test_small_models_take_the_intended_lowering_paths():
    def kinds(cls: type[nn.Module], shape: tuple[int, ...]) -> list[str]:
        return [op.kind for op in compile_model(_seeded(cls), shape).ops]

    assert "add" in kinds(ResidualNet, (2, 6, 6))
    assert kinds(ConvBNNet, (2, 6, 6)).count("conv") == 3  # batch-norms folded, no extra op

    pool = compile_model(_seeded(PoolNet), (2, 6, 6))
    rescales = [op for op in pool.ops if op.kind == "rescale"]
    assert [op.attrs.multiplier for op in rescales] == [1]  # 1/4 exact as a scale change
    fc = pool.ops[-1]
    assert fc.kind == "linear"
    assert fc.attrs.weight_bits == pool.field.weight_bits + math.ceil(math.log2(9))

    pool3 = compile_model(_seeded(Pool3Net), (1, 6, 6))
    mults = [op.attrs.multiplier for op in pool3.ops if op.kind == "rescale"]
    assert round(2**13 / 9) in mults
    assert pool3.ops[-1].kind == "rescale"
    assert pool3.output_scale == pool3.field.frac_bits + 2

    conv = next(
        op for op in compile_model(_seeded(Pool3ConvNet), (2, 6, 6)).ops if op.kind == "conv"
    )
    assert conv.attrs.weight_bits == 9 + 4

    # a 7x7 pool settled by a rescale: the multiplier is the nearest integer to 2^bits / 49
    plan7 = compile_model(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.ReLU()), (1, 7, 7))
    rescale = plan7.ops[2]
    assert rescale.kind == "rescale"
    bits = rescale.scale - plan7.ops[1].scale
    assert bits >= plan7.field.weight_bits
    assert abs(rescale.attrs.multiplier - 2**bits / 49) <= 0.5
    x = np.random.default_rng(0).uniform(-1, 1, size=(4, 1, 7, 7))
    assert_matches_naive(plan7, x)


@pytest.mark.parametrize("per_channel", [False, True])
def test_channel_activation_polynomials_match_naive(per_channel):
    gm = _converted(per_channel)
    plan = compile_model(gm, (2, 6, 6))
    acts = [op for _, op in plan.activations()]
    assert [op.attrs.degree for op in acts] == [2, 3]
    f = plan.field
    for op, (deg, kept) in zip(acts, [(2, 2), (3, 1)], strict=True):
        assert int(op.arrays["relu_mask"].sum()) == kept
        assert op.arrays["coefficients"].shape[1] == deg + 1
        assert op.attrs.poly_shift == deg * f.poly_bits + f.coef_bits - f.frac_bits
        assert op.arrays["coefficients"].shape[0] == (
            len(op.arrays["relu_mask"]) if per_channel else 1
        )
    # a degree-3 model: polynomial inputs at 6 bits by default (POLY_SUM_BITS), so the
    # coefficients follow C_j = round(c_j * 2^(coef_bits + (d - j) * 6))
    assert f.poly_bits == 6 and acts[1].poly_input_shift() == acts[1].attrs.shift + 2
    act2 = gm.get_submodule("act2")
    c = act2.coefficients.detach().double().numpy()
    want = np.rint(c * 2.0 ** np.array([8 + (3 - j) * 6 for j in range(4)])).astype(np.int64)
    np.testing.assert_array_equal(acts[1].arrays["coefficients"], want)
    assert plan.counts() == {"relu_count": 2 * 36 + 1, "poly_count": 1 * 36 + 3}

    x = _inputs((2, 6, 6), n=4, seed=7)
    assert_matches_naive(plan, x)
    np.testing.assert_allclose(plan.reference(x), _float_out(gm, x), atol=0.02)


def _act_graph(
    prefix: list[nn.Module],
    shape: tuple[int, ...],
    keep: list[bool],
    degree: int,
    coef: list[list[float]],
) -> nn.Module:
    """``prefix`` then a ChannelActivation with the given mask and coefficients, converted."""
    name = str(len(prefix))
    model = nn.Sequential(*prefix, nn.ReLU())
    gm = convert(model, torch.zeros((1, *shape)), per_channel=len(coef) > 1)
    ratio = 1.0 - sum(keep) / len(keep)
    set_layers(gm, {name: LayerSpec(ratio, degree)}, scores={name: torch.tensor(keep).float()})
    act = gm.get_submodule(name)
    assert act.relu_mask.tolist() == keep
    with torch.no_grad():
        act.coefficients.copy_(torch.tensor(coef))
    return gm


def test_activation_shifts_round_half_up():
    """Exact hand-computed outputs at .5 ties of both shifts of an activation, negatives too."""
    conv = nn.Conv2d(2, 2, 1, groups=2, bias=False)
    with torch.no_grad():
        conv.weight.fill_(0.5)
    model = _act_graph([conv], (2, 1, 4), [True, False], 2, [[0.0, -0.5, 0.0]])
    plan = compile_model(model, (2, 1, 4))
    (op,) = [op for _, op in plan.activations()]
    assert op.attrs.shift == 9 and op.attrs.poly_shift == 16
    np.testing.assert_array_equal(op.arrays["coefficients"], [[0, -(2**15), 0]])
    # conv: 256 x; X = floor((256 x + 256) / 512) = floor((x + 1) / 2)
    # channel 0: max(X, 0); channel 1: floor((-2^15 X + 2^15) / 2^16) = floor((1 - X) / 2)
    x = np.array([[[[-3, 3, -1, 1]], [[5, -5, 9, -7]]]])
    # channel 1: X = 3, -2, 5, -3 -> -1.5, 1, -2.5, 2 -> -1, 1, -2, 2 (ties go up)
    want = [[[[0, 2, 0, 1]], [[-1, 1, -2, 2]]]]
    np.testing.assert_array_equal(plan.reference(x, encoded=True, decode=False), want)
    assert_matches_naive(plan, x, encoded=True)


def test_truncate_rounds_half_up():
    """A conv feeding a conv at scale 26 has its input truncated; ties must round up."""
    convs = [nn.Conv2d(1, 1, 1, bias=False) for _ in range(3)]
    with torch.no_grad():
        for c, w in zip(convs, [1.0, 0.5, 1.0], strict=True):
            c.weight.fill_(w)
    plan = compile_model(nn.Sequential(*convs[:2]), (1, 1, 4))
    assert [op.kind for op in plan.ops] == ["input", "conv", "conv"]  # 17 bits: no truncate
    plan = compile_model(nn.Sequential(*convs), (1, 1, 6))
    kinds = [op.kind for op in plan.ops]
    assert kinds == ["input", "conv", "conv", "truncate", "conv"]
    assert plan.ops[3].attrs.shift == 18 and plan.ops[3].scale == 8
    # x * 2^17 reaches the truncate: floor((x + 1) / 2), times 2^9 by the last conv
    x = np.array([[[[-3, 3, -1, 1, -2, 2]]]])
    want = np.array([[[[-1, 2, 0, 1, -1, 1]]]]) * 512
    np.testing.assert_array_equal(plan.reference(x, encoded=True, decode=False), want)
    assert_matches_naive(plan, x, encoded=True)


# =============================================================================================
# Zoo models
# =============================================================================================

ZOO = [
    ("resnet20", {"width": 4}),
    ("vgg16", {"width": 4}),
    ("minionn", {"width": 8}),
    ("lenet5", {"width": 4}),
]


@pytest.mark.parametrize(("arch", "kwargs"), ZOO, ids=[a for a, _ in ZOO])
def test_zoo_models_compile_and_match_float(arch, kwargs):
    torch.manual_seed(0)
    model = build_model(arch, in_channels=1, image_size=28, num_classes=10, **kwargs)
    model = _randomise_bn(model, 1)
    plan = compile_model(model, (1, 28, 28))
    assert plan.input_shape == (1, 28, 28)
    assert plan.output.shape == (10,)
    x = np.random.default_rng(2).uniform(0.0, 1.0, size=(12, 1, 28, 28))
    want = _float_out(model, x)
    got = plan.reference(x)
    assert got.shape == (12, 10)
    # quantisation at 8 fractional bits: tolerance 0.02 absolute + 2% of the logits' range
    tol = 0.02 + 0.02 * np.abs(want).max()
    assert np.abs(got - want).max() < tol
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.75
    stats = RangeStats()
    plan.reference(x[:2], stats=stats)
    assert stats.total_overflows == 0

    # relu_count = number of activation elements per inference (one nn.ReLU per site)
    sizes: list[int] = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: sizes.append(out[0].numel()))
        for m in model.modules()
        if isinstance(m, nn.ReLU)
    ]
    _float_out(model, x[:1])
    for h in hooks:
        h.remove()
    assert plan.counts() == {"relu_count": sum(sizes), "poly_count": 0}
    assert len(plan.activations()) == len(sizes)
    assert plan.info["relu_count"] == sum(sizes)
    assert "ReLUs" in plan.summary()


# =============================================================================================
# Batch-norm folding
# =============================================================================================


def test_batchnorm_folds_into_conv_and_linear():
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        nn.Flatten(),
        nn.Linear(3 * 4 * 4, 5),
        nn.BatchNorm1d(5),
    )
    _randomise_bn(model, 4)
    with torch.no_grad():  # strong batch-norms, so an unfolded one would show
        model[1].weight.copy_(torch.tensor([3.0, -2.0, 0.25]))
        model[1].running_mean.copy_(torch.tensor([1.0, -1.0, 2.0]))
        model[4].running_var.fill_(0.1)
    plan = compile_model(model, (2, 4, 4))
    assert [op.kind for op in plan.ops] == ["input", "conv", "flatten", "linear"]
    bn = model[1]
    s = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
    w = model[0].weight.detach().double() * s.view(-1, 1, 1, 1)
    np.testing.assert_array_equal(plan.ops[1].arrays["weight"], np.rint(w.numpy() * 2**9))
    x = _inputs((2, 4, 4), n=5)
    np.testing.assert_allclose(plan.reference(x), _float_out(model, x), atol=0.05)
    assert_matches_naive(plan, x[:2])


def test_batchnorm_alone_becomes_a_depthwise_conv():
    model = _randomise_bn(nn.Sequential(nn.BatchNorm2d(2), nn.ReLU()), 5)
    plan = compile_model(model, (2, 3, 3))
    conv = plan.ops[1]
    assert conv.kind == "conv" and conv.attrs.groups == 2
    x = _inputs((2, 3, 3), n=4)
    np.testing.assert_allclose(plan.reference(x), _float_out(model, x), atol=0.02)
    assert_matches_naive(plan, x)


# =============================================================================================
# Unsupported layers
# =============================================================================================


class _LPPoolNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.lppool_site = nn.LPPool2d(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lppool_site(self.conv(x))


class _SigmoidNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.squash = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.squash(self.fc(x))


class _CatNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 1, 1)
        self.b = nn.Conv2d(1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.a(x), self.b(x)], 2)  # along height: not supported


@pytest.mark.parametrize(
    ("cls", "shape", "words"),
    [
        (_LPPoolNet, (1, 6, 6), ["lppool_site", "LPPool2d"]),
        (_SigmoidNet, (4,), ["squash", "Sigmoid"]),
        (_CatNet, (1, 4, 4), ["cat"]),
    ],
)
def test_unsupported_layers_raise_naming_the_layer(cls, shape, words):
    with pytest.raises(UnsupportedLayerError) as info:
        compile_model(cls(), shape)
    assert isinstance(info.value, ValueError)
    for w in words:
        assert w in str(info.value)


def test_unfinished_blend_is_rejected():
    gm = _converted(per_channel=False)
    set_blend(gm, 0.5)
    with pytest.raises(UnsupportedLayerError, match="blend"):
        compile_model(gm, (2, 6, 6))
    set_blend(gm, 1.0)
    compile_model(gm, (2, 6, 6))


# =============================================================================================
# Wrap-around mod p
# =============================================================================================


def _small_prime() -> int:
    p = 2**23 + 1
    while not is_probable_prime(p):
        p += 2
    return p


def _heavy_model() -> nn.Module:
    torch.manual_seed(11)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(3, 2, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(2 * 4 * 4, 3),
    )
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Conv2d | nn.Linear):
                m.weight.mul_(60.0)
                m.bias.uniform_(-4.0, 4.0)
    return model.eval()


def test_small_prime_overflows_and_wraps_like_the_naive_interpreter():
    p = _small_prime()
    assert 2**23 < p < 2**24
    model = _heavy_model()
    x = _inputs((2, 4, 4), n=3, seed=5)

    small = compile_model(model, (2, 4, 4), Field(p=p))
    stats = RangeStats()
    small.reference(x, stats=stats)
    assert stats.total_overflows > 0
    assert max(stats.max_abs.values()) > p // 2
    assert_matches_naive(small, x)  # both wrap mod p the same way

    big = compile_model(model, (2, 4, 4))
    assert big.field.p == DELPHI_PRIME
    stats = RangeStats()
    out = big.reference(x, stats=stats)
    assert stats.total_overflows == 0
    assert max(stats.max_abs.values()) < DELPHI_PRIME // 2
    want = _float_out(model, x)
    assert np.abs(out - want).max() < 0.01 * np.abs(want).max()
    assert_matches_naive(big, x)


# =============================================================================================
# Big-number paths of the reference (values near p/2)
# =============================================================================================


def _near_half(shape: tuple[int, ...], p: int, seed: int, spread: int = 2**40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    half = p // 2
    mag = half - rng.integers(0, spread, size=shape, dtype=np.int64)
    sign = rng.choice(np.array([-1, 1], dtype=np.int64), size=shape)
    return mag * sign


@pytest.fixture
def big_centre_calls(monkeypatch):
    """Counts calls of the reference's object-integer reduction (the big-number paths)."""
    calls = []
    orig = reference_mod._big_centre

    def spy(v: np.ndarray, p: int) -> torch.Tensor:
        calls.append(v.shape)
        return orig(v, p)

    monkeypatch.setattr(reference_mod, "_big_centre", spy)
    return calls


class _ResidualConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1, groups=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x)


@pytest.mark.parametrize("p", [MERSENNE_61, 2**62 - 57])
def test_big_linear_limb_path_is_exact(big_centre_calls, p):
    # with p near 2^62 the inputs need four 20-bit limbs
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.Flatten(), nn.Linear(12, 2))
    plan = compile_model(model, (2, 4, 4), Field(p=p))
    x = _near_half((2, 2, 4, 4), p, seed=1)
    x[0, 0, 0, :2] = [p // 2, -(p // 2)]
    assert_matches_naive(plan, x, encoded=True)
    assert len(big_centre_calls) >= 2  # conv and linear both took the limb path


def test_big_add_path_is_exact(big_centre_calls):
    p = MERSENNE_61
    torch.manual_seed(2)
    plan = compile_model(_ResidualConv(), (2, 3, 3), Field(p=p))
    add = plan.ops[-1]
    assert add.kind == "add" and sorted(add.attrs.shifts) == [0, 9]
    x = _near_half((2, 2, 3, 3), p, seed=2)
    assert_matches_naive(plan, x, encoded=True)
    assert len(big_centre_calls) >= 2  # limb conv and the add


@pytest.mark.parametrize("relu", [False, True])
def test_big_rescale_path_is_exact(big_centre_calls, relu):
    p = MERSENNE_61
    model = nn.Sequential(nn.AvgPool2d(3), nn.ReLU()) if relu else nn.Sequential(nn.AvgPool2d(3))
    plan = compile_model(model, (1, 3, 6), Field(p=p))
    kinds = ["input", "sumpool", "rescale", "activation"]
    assert [op.kind for op in plan.ops] == (kinds if relu else kinds[:3])
    # |sum of 9| stays below 2^63 (int64 sumpool), |sum * 910| does not fit int64
    x = _near_half((3, 1, 3, 6), 2**58, seed=3, spread=2**30)
    assert_matches_naive(plan, x, encoded=True)
    assert len(big_centre_calls) >= 1


@pytest.mark.parametrize("per_channel", [False, True])
def test_big_polynomial_path_is_exact(big_centre_calls, per_channel):
    p = MERSENNE_61
    coef = [[0.2, 0.5, 0.2, -0.01]]
    if per_channel:
        coef = [coef[0], [0.1, 0.4, 0.3, 0.02], [-0.3, 0.75, -0.3, 0.015]]
    gm = _act_graph([], (3, 2, 2), [False, True, False], 3, coef)
    plan = compile_model(gm, (3, 2, 2), Field(p=p))
    (op,) = [op for _, op in plan.activations()]
    assert op.attrs.shift == 0 and op.attrs.degree == 3
    assert op.arrays["coefficients"].shape == (len(coef), 4)
    x = _near_half((2, 3, 2, 2), p, seed=4)
    x[0, 0, 0, 0] = p // 2
    x[1, 2, 1, 1] = -(p // 2)
    x[0, 2, 0, 1] = 12345  # small values mixed in
    x[0, 1, 0, 0] = p // 2  # the largest positive value, on a ReLU channel
    assert_matches_naive(plan, x, encoded=True)
    assert len(big_centre_calls) >= 1
    stats = RangeStats()
    plan.reference(x, encoded=True, stats=stats)
    assert stats.total_overflows > 0  # the polynomial wraps on the replaced channels


def test_encoded_inputs_are_reduced_mod_p():
    plan = compile_model(_seeded(ConvBNNet), (2, 6, 6))
    p = plan.field.p
    x = plan.field.encode(_inputs((2, 6, 6), n=2))
    base = plan.reference(x, encoded=True, decode=False)
    shifted = x + p * np.where(x < 0, 1, -1)  # other representatives of the same residues
    np.testing.assert_array_equal(plan.reference(shifted, encoded=True, decode=False), base)


@pytest.mark.parametrize("p", [DELPHI_PRIME, MERSENNE_61])
def test_centred_range_boundary(p):
    """Residues up to (p-1)/2 are positive, from (p+1)/2 negative: visible through a ReLU."""
    plan = compile_model(nn.Sequential(nn.ReLU()), (1, 8), Field(p=p))
    h = p // 2
    x = np.array([[[h, h + 1, -h, -h - 1, p, -p, p - 1, 1 - p]]], dtype=np.int64)
    want = [[[h, 0, 0, h, 0, 0, 0, 1]]]
    np.testing.assert_array_equal(plan.reference(x, encoded=True, decode=False), want)
    assert_matches_naive(plan, x, encoded=True)


# =============================================================================================
# Storage and fingerprints
# =============================================================================================


def _rewrite_zip(src, dst, edit) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            zout.writestr(item.filename, edit(item.filename, zin.read(item.filename)))


@pytest.fixture
def saved_plan(tmp_path):
    plan = compile_model(_seeded(ConvBNNet), (2, 6, 6))
    plan.info["note"] = "hello"
    path = tmp_path / "model.plan"
    fp = plan.save(path)
    return plan, path, fp


def test_save_load_roundtrip(saved_plan):
    plan, path, fp = saved_plan
    assert fp == plan.fingerprint()
    assert len(fp) == 64
    loaded = Plan.load(path)
    assert loaded.fingerprint() == fp
    assert loaded.field == plan.field
    assert loaded.input_shape == plan.input_shape
    assert loaded.info == plan.info
    assert [op.meta() for op in loaded.ops] == [op.meta() for op in plan.ops]
    x = _inputs((2, 6, 6), n=3)
    np.testing.assert_array_equal(
        loaded.reference(x, decode=False), plan.reference(x, decode=False)
    )
    assert loaded.counts() == plan.counts()


def test_edited_weight_byte_is_detected(saved_plan, tmp_path):
    plan, path, _ = saved_plan
    target = "op1/weight.npy"

    def flip(name: str, data: bytes) -> bytes:
        if name != target:
            return data
        a = np.load(io.BytesIO(data))
        assert a.size  # the data section is at the end of the .npy
        return data[:-1] + bytes([data[-1] ^ 0x01])

    edited = tmp_path / "edited.plan"
    _rewrite_zip(path, edited, flip)
    with zipfile.ZipFile(edited) as z:
        assert not np.array_equal(np.load(io.BytesIO(z.read(target))), plan.ops[1].arrays["weight"])
    with pytest.raises(ValueError, match="fingerprint"):
        Plan.load(edited)


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m["ops"][1]["attrs"].__setitem__("stride", [2, 2]),
        lambda m: m["field"].__setitem__("frac_bits", 9),
        lambda m: m["ops"][2].__setitem__("name", "renamed"),
        lambda m: m.__setitem__("input_shape", [2, 7, 7]),
        lambda m: m.__setitem__("fingerprint", "0" * 64),
    ],
    ids=["stride", "field", "name", "input_shape", "fingerprint"],
)
def test_edited_json_is_detected(saved_plan, tmp_path, edit):
    _, path, _ = saved_plan

    def change(name: str, data: bytes) -> bytes:
        if name != "plan.json":
            return data
        meta = json.loads(data)
        edit(meta)
        return json.dumps(meta).encode()

    edited = tmp_path / "edited.plan"
    _rewrite_zip(path, edited, change)
    with pytest.raises(ValueError, match="fingerprint"):
        Plan.load(edited)


def test_info_is_not_part_of_the_fingerprint(saved_plan, tmp_path):
    _, path, fp = saved_plan

    def change(name: str, data: bytes) -> bytes:
        if name != "plan.json":
            return data
        meta = json.loads(data)
        meta["info"] = {"other": 1}
        return json.dumps(meta).encode()

    edited = tmp_path / "edited.plan"
    _rewrite_zip(path, edited, change)
    loaded = Plan.load(edited)
    assert loaded.fingerprint() == fp
    assert loaded.info == {"other": 1}


def test_unreadable_files_are_rejected(saved_plan, tmp_path):
    _, path, _ = saved_plan
    text = tmp_path / "not_a_zip.plan"
    text.write_text("this is not a zip file\n")
    with pytest.raises(ValueError):
        Plan.load(text)

    missing_array = tmp_path / "missing.plan"
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(missing_array, "w") as zout:
        for item in zin.infolist():
            if item.filename != "op1/weight.npy":
                zout.writestr(item.filename, zin.read(item.filename))
    with pytest.raises(ValueError):
        Plan.load(missing_array)

    wrong_format = tmp_path / "format.plan"

    def change(name: str, data: bytes) -> bytes:
        if name != "plan.json":
            return data
        meta = json.loads(data)
        meta["format"] = "something-else/9"
        return json.dumps(meta).encode()

    _rewrite_zip(path, wrong_format, change)
    with pytest.raises(ValueError, match="not a"):
        Plan.load(wrong_format)

    bad_json = tmp_path / "json.plan"
    _rewrite_zip(path, bad_json, lambda n, d: b"{not json" if n == "plan.json" else d)
    with pytest.raises(ValueError):
        Plan.load(bad_json)


def test_fingerprint_tracks_weights_and_field():
    model = _seeded(ConvBNNet)
    plan = compile_model(model, (2, 6, 6))
    fp = plan.fingerprint()
    assert compile_model(model, (2, 6, 6)).fingerprint() == fp  # deterministic
    same = copy.deepcopy(plan)
    same.info = {"anything": True}
    assert same.fingerprint() == fp

    changed = copy.deepcopy(plan)
    changed.ops[1].arrays["weight"][0, 0, 0, 0] += 1
    assert changed.fingerprint() != fp
    changed = copy.deepcopy(plan)
    changed.ops[-1].arrays["bias"][0] -= 1
    assert changed.fingerprint() != fp

    for fld in (
        Field(frac_bits=9),
        Field(weight_bits=10),
        Field(coef_bits=7),
        Field(p=MERSENNE_61),
    ):
        assert Plan(fld, plan.input_shape, plan.ops).fingerprint() != fp
    assert Plan(Field(), plan.input_shape, plan.ops).fingerprint() == fp
    assert compile_model(model, (2, 6, 6), Field(weight_bits=10)).fingerprint() != fp


# =============================================================================================
# Input shapes
# =============================================================================================


def test_reference_rejects_wrong_input_shape():
    plan = compile_model(_seeded(ConvBNNet), (2, 6, 6))
    for shape in [(2, 5, 6), (3, 2, 5, 6), (1, 6, 6), (4, 1, 6, 6), (2, 2, 6, 6, 1)]:
        with pytest.raises(ValueError, match="does not match"):
            plan.reference(np.zeros(shape))


def test_reference_single_unbatched_input():
    plan = compile_model(_seeded(ConvBNNet), (2, 6, 6))
    x = _inputs((2, 6, 6), n=3)
    batched = plan.reference(x)
    single = plan.reference(x[1])
    assert batched.shape == (3, 3) and single.shape == (3,)
    np.testing.assert_array_equal(single, batched[1])
    ints = plan.reference(torch.from_numpy(x[2]), decode=False)
    assert ints.dtype == np.int64
    np.testing.assert_array_equal(ints, plan.reference(x, decode=False)[2])
    # small batch sizes split the work without changing the result
    np.testing.assert_array_equal(plan.reference(x, batch_size=1), batched)


# =============================================================================================
# Regressions: bugs found and fixed (sumpool overflow, pool divisor, wrap counting)
# =============================================================================================


def test_sumpool_exact_near_half_with_large_prime():
    p = MERSENNE_61
    plan = compile_model(nn.Sequential(nn.AvgPool2d(3)), (1, 3, 3), Field(p=p))
    assert [op.kind for op in plan.ops] == ["input", "sumpool", "rescale"]
    x = np.full((1, 1, 3, 3), p // 2 - 4, dtype=np.int64)
    assert_matches_naive(plan, x, encoded=True)


def test_pool_divisor_survives_truncate_before_linear():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1),
        nn.Conv2d(2, 2, 3, padding=1),  # scale 26 > frac_bits + weight_bits: truncated later
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(8, 3),
    )
    plan = compile_model(model, (1, 4, 4))
    assert "truncate" in [op.kind for op in plan.ops]
    x = np.random.default_rng(0).uniform(0.0, 1.0, size=(2, 1, 4, 4))
    np.testing.assert_allclose(plan.reference(x), _float_out(model, x), atol=0.02)


def _wrapping_linear() -> tuple[Plan, np.ndarray]:
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 1))
    with torch.no_grad():
        model[1].weight.fill_(1.0)
        model[1].bias.zero_()
    plan = compile_model(model, (4,), Field(p=MERSENNE_61))
    return plan, np.full((1, 4), 2**59, dtype=np.int64)  # exact output 2^70: wraps


def _wrapping_add() -> tuple[Plan, np.ndarray]:
    torch.manual_seed(2)
    plan = compile_model(_ResidualConv(), (2, 3, 3), Field(p=MERSENNE_61))
    return plan, _near_half((1, 2, 3, 3), MERSENNE_61, seed=2)  # x << 9 wraps


def _wrapping_rescale() -> tuple[Plan, np.ndarray]:
    plan = compile_model(nn.Sequential(nn.AvgPool2d(3)), (1, 3, 3), Field(p=MERSENNE_61))
    return plan, np.full((1, 1, 3, 3), 2**56, dtype=np.int64)  # 9 * 2^56 * 910 wraps


@pytest.mark.parametrize("make", [_wrapping_linear, _wrapping_add, _wrapping_rescale])
def test_range_stats_count_wraps_on_big_number_paths(make):
    plan, x = make()
    assert_matches_naive(plan, x, encoded=True)
    stats = RangeStats()
    plan.reference(x, encoded=True, stats=stats)
    assert stats.total_overflows > 0


def test_view_with_size_and_conv_chain_compile():
    """x.view(x.size(0), -1) lowers to flatten; conv -> conv without activation works."""

    class ViewNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(1, 2, 3, padding=1)
            self.c2 = nn.Conv2d(2, 2, 3)
            self.fc = nn.Linear(2 * 4 * 4, 3)

        def forward(self, x):
            x = torch.relu(self.c2(self.c1(x)))
            return self.fc(x.view(x.size(0), -1))

    torch.manual_seed(0)
    m = ViewNet().eval()
    plan = compile_model(m, (1, 6, 6))
    assert [op.kind for op in plan.ops] == [
        "input", "conv", "conv", "activation", "flatten", "linear",
    ]  # fmt: skip
    x = torch.randn(3, 1, 6, 6)
    np.testing.assert_allclose(plan.reference(x.numpy()), m(x).detach().numpy(), atol=0.02)


@pytest.mark.parametrize(
    "arch, shape",
    [("resnet20", (3, 16, 16)), ("resnet32", (3, 16, 16)), ("resnet56", (1, 8, 8)),
     ("vgg16", (3, 32, 32)), ("minionn", (1, 28, 28)), ("lenet5", (1, 28, 28))],
)  # fmt: skip
def test_zoo_models_need_no_local_truncation(arch, shape):
    """Every zoo architecture lowers without a ``truncate`` op (each linear layer feeds an
    activation, which truncates exactly), so no secure inference of theirs can wrap."""
    from safenet.benchmark import random_plan

    plan = random_plan(arch, shape, width=2, relu_ratio=0.5)
    assert [op.name for op in plan.ops if op.kind == "truncate"] == []
    assert plan.counts()["poly_count"] > 0
