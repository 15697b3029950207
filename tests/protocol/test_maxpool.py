"""Max pooling: the garbled max circuit, its lowering from PyTorch (any kernel, stride,
padding, dilation, ceil_mode, adaptive), exactness against the reference in secure runs
(live and banked), and its place in the cost model."""

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import safenet
from safenet.approx.cost import count
from safenet.crypto.gc import decode, evaluate, garble
from safenet.crypto.gc.maxpool_circuit import max_circuit, max_reference, max_weights
from safenet.field import DELPHI_PRIME, POLY_PRIME
from safenet.nn.activation import ChannelActivation
from safenet.plan.ir import UnsupportedLayerError
from safenet.plan.pooling import window_index
from safenet.protocol.engine import (
    garbled_layers,
    garbled_table_bytes,
)
from safenet.protocol.garbled import share_bits
from safenet.protocol.session import encode_input
from safenet.protocol.verify import check_trace
from safenet.secure import run_local


def _ints(bits: np.ndarray) -> list[int]:
    return [sum(int(b) << j for j, b in enumerate(col)) for col in np.asarray(bits).T]


def _window_cases(p: int, k: int, n: int, rng: np.random.Generator):
    """Shares (a offset by h, b) of random windows, with ties, extremes and padding."""
    h = p // 2
    v = rng.integers(-h, h + 1, size=(k, n))
    v[:, 0] = h  # all at the top
    v[:, 1] = -h  # all at the bottom
    v[:, 2] = 0
    v[0, 3], v[1:, 3] = h, -h  # one extreme wins
    v[-1, 4], v[:-1, 4] = -h + 1, -h
    b = rng.integers(0, p, size=(k, n))
    a = (v + h - b) % p  # the server's offset share, so that (a + b) mod p = v + h
    a[-1, 5:8], b[-1, 5:8] = 0, 0  # padding in some windows (u = 0, the smallest)
    v[-1, 5:8] = -h
    return a, b, v


@pytest.mark.parametrize("p, k", [(DELPHI_PRIME, 4), (DELPHI_PRIME, 9), (POLY_PRIME, 3),
                                  (97, 2), (2**31 - 1, 1)])  # fmt: skip
def test_max_circuit_is_exact_in_plaintext_and_garbled(p, k):
    rng = np.random.default_rng(k)
    circ = max_circuit(p, k)
    n = 300
    a, b, v = _window_cases(p, k, n, rng)
    nb = p.bit_length()
    bits = {"server_share": share_bits(a, nb), "client_share": share_bits(b, nb)}
    want = [int(m) + p // 2 for m in v.max(axis=0)]
    assert list(max_reference(a, b, p)) == want
    weights = np.array(max_weights(p), dtype=object)
    assert list(weights @ circ.evaluate_plain(bits)["z"].astype(object)) == want
    g = garble(circ, n)
    labels = {"server_share": g.encode("server_share", bits["server_share"])}
    l0, l1 = g.label_pairs("client_share")
    labels["client_share"] = np.where(bits["client_share"][..., None].astype(bool), l1, l0)
    out = decode(evaluate(circ, g.take_tables(), labels), g.decode_bits)
    assert _ints(out) == want


def test_max_circuit_cost_is_stated():
    c = max_circuit(DELPHI_PRIME, 4)
    assert c.and_count == 734 and max_circuit(DELPHI_PRIME, 9).and_count == 1754
    assert c.and_count_by_stage() == {"1 add shares mod p": 488, "2 max": 246}
    assert set(c.inputs) == {"server_share", "client_share"} and len(c.outputs["z"]) == 41


POOLS = [
    nn.MaxPool2d(2),
    nn.MaxPool2d(3, 2, 1),
    nn.MaxPool2d(3, 2, 1, ceil_mode=True),
    nn.MaxPool2d((2, 3), (1, 2), (1, 1), dilation=(2, 1)),
    nn.MaxPool2d(3, ceil_mode=True),
    nn.AdaptiveMaxPool2d((3, 2)),
    nn.AdaptiveMaxPool2d(1),
]


@pytest.mark.parametrize("pool", POOLS, ids=repr)
def test_every_pool_shape_lowers_exactly(pool):
    """A model that is only the pool: the reference on integers equals PyTorch's pool on the
    same integers, element for element (windows, padding, ceil_mode, adaptive sizes)."""
    plan = safenet.compile(nn.Sequential(pool).eval(), (2, 11, 13))
    assert [op.kind for op in plan.ops][:2] == ["input", "maxpool"]
    x = torch.randint(-(2**20), 2**20, (4, 2, 11, 13))
    got = plan.reference(x.numpy(), encoded=True, decode=False)
    assert np.array_equal(got, pool(x.double()).long().numpy())


def test_window_index_pads_short_windows():
    idx = window_index([[0, 1], [1]], [[0], [0, 1]], (2, 2, 2))
    assert idx.shape == (2 * 2 * 2, 4)
    assert list(idx[0]) == [0, 2, -1, -1] and list(idx[4]) == [4, 6, -1, -1]
    assert list(idx[3]) == [2, 3, -1, -1]


def test_functional_pools_lower_like_modules():
    class Net(nn.Module):
        def forward(self, x):
            return F.adaptive_max_pool2d(F.max_pool2d(x, 2, padding=1), (2, 2))

    plan = safenet.compile(Net(), (1, 6, 6))
    assert [op.kind for op in plan.ops] == ["input", "maxpool", "maxpool"]
    with pytest.raises(UnsupportedLayerError, match="return_indices"):
        safenet.compile(nn.Sequential(nn.MaxPool2d(2, return_indices=True)), (1, 4, 4))


class Stem(nn.Module):
    """A ResNet-style stem (conv, BN, ReLU, 3x3/2 max pool with padding), a max pool straight
    after a conv (before its ReLU), polynomial channels, and adaptive max pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 6, 3)
        self.act = ChannelActivation(6, degree=2)
        self.fc = nn.Linear(6 * 2 * 2, 5)

    def forward(self, x):
        y = F.max_pool2d(self.bn(self.conv(x)).relu(), 3, 2, 1)
        y = self.act(F.max_pool2d(self.conv2(y), 2, ceil_mode=True))
        return self.fc(F.adaptive_max_pool2d(y, 2).flatten(1))


def _stem(poly: bool) -> tuple[nn.Module, safenet.Plan]:
    torch.manual_seed(3)
    net = Stem().eval()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.2, 0.2)
        net.bn.running_var.uniform_(0.5, 1.5)
        if poly:
            net.act.relu_mask[:3] = False  # three polynomial channels, three ReLU channels
            net.act.coefficients.copy_(torch.tensor([[0.1, 0.5, 0.2]]))
    return net, safenet.compile(net, (3, 12, 12))


@pytest.fixture(scope="module")
def stem_plan():
    return _stem(poly=True)


def test_max_pools_run_securely_and_exactly():
    """All-ReLU: bit-exact against the reference over real processes and TCP."""
    net, plan = _stem(poly=False)
    assert sum(op.kind == "maxpool" for op in plan.ops) == 3
    x = np.random.default_rng(1).normal(size=(3, 12, 12))
    y, report = run_local(plan, x)
    assert np.array_equal(y, plan.reference(x))
    assert np.abs(y - net.double()(torch.tensor(x)[None]).detach().numpy()[0]).max() < 0.1
    # one round trip per garbled layer: the online phase is 2 activations + 3 pools
    assert report["online_rounds"] == 1 + 2 + 3


def test_max_pools_beside_polynomial_channels_op_by_op(stem_plan):
    """With polynomial channels (within their stated bound), every op on the values the
    secure run had, the max pools exact."""
    from test_secure import _secure

    _, plan = stem_plan
    x = np.random.default_rng(2).normal(size=(3, 12, 12))
    _, srv, cli = _secure(plan, x, keep_trace=True)
    xi = encode_input(plan, x)
    found = check_trace(plan, srv.trace, cli.trace, xi)
    assert found.ok and found.ops == len(plan.ops), found.failed_ops


def test_max_pools_in_the_cost_model_and_the_budget(stem_plan):
    _, plan = stem_plan
    c = count(plan)
    layers = garbled_layers(plan)
    pools = {i for i, op in enumerate(plan.ops) if op.kind == "maxpool"}
    assert pools <= set(layers)
    assert 32 * c.ands + 16 * c.gc_rows == garbled_table_bytes(plan)
    assert c.maxpool_layers == 3
    outputs = sum(int(np.prod(plan.ops[i].shape)) for i in pools)
    bits = plan.field.p.bit_length()
    assert sum(layers[i].circuit.n_outputs * layers[i].n for i in pools) == bits * outputs


def test_banked_max_pool_sessions_run_online_only(tmp_path):
    """Max-pool material goes through a preprocessing bank like ReLU material."""
    import socket
    import threading

    from safenet.channel import listen
    from safenet.secure import infer, preprocess, serve

    _, plan = _stem(poly=False)
    lst = listen("127.0.0.1", 0)
    t = threading.Thread(target=serve, args=(plan,),
                         kwargs={"listener": lst, "bank": tmp_path / "s"}, daemon=True)  # fmt: skip
    t.start()
    port = lst.getsockname()[1]
    assert preprocess("127.0.0.1", port, 1, tmp_path / "c")["banked"] == 1
    x = np.random.default_rng(4).normal(size=(3, 12, 12))
    y, r = infer("127.0.0.1", port, x, bank=tmp_path / "c")
    assert r["mode"] == "online" and np.array_equal(y, plan.reference(x))
    lst.shutdown(socket.SHUT_RDWR)
    lst.close()
    t.join(30)


@pytest.mark.parametrize("pool", [nn.MaxPool2d(2), nn.MaxPool2d(3, 2, 1), nn.AdaptiveMaxPool2d(3)],
                         ids=repr)  # fmt: skip
@pytest.mark.parametrize("act", [nn.ReLU(), nn.ReLU6()], ids=["relu", "relu6"])
def test_a_relu_that_only_feeds_a_max_pool_runs_after_it_exactly(pool, act):
    """conv -> ReLU -> max pool is lowered as conv -> max pool -> ReLU: the same integers
    (rounding and ReLU are monotone), a quarter of the ReLUs for a 2 x 2 pool."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), act, pool, nn.Flatten()).eval()
    kept = safenet.compile(net, (3, 10, 10), reorder_pools=False)
    moved = safenet.compile(net, (3, 10, 10))
    assert [op.kind for op in kept.ops][:4] == ["input", "conv", "activation", "maxpool"]
    assert [op.kind for op in moved.ops][:4] == ["input", "conv", "maxpool", "activation"]
    assert moved.counts()["relu_count"] < kept.counts()["relu_count"]
    x = np.random.default_rng(0).normal(size=(16, 3, 10, 10)) * 3
    assert np.array_equal(moved.reference(x, decode=False), kept.reference(x, decode=False))


def test_a_relu_with_other_users_or_polynomials_stays_before_the_pool():
    class TwoUsers(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            y = self.conv(x).relu()
            return torch.cat([F.max_pool2d(y, 2), F.avg_pool2d(y, 2)], 1)

    kinds = [op.kind for op in safenet.compile(TwoUsers(), (3, 8, 8)).ops]
    assert kinds.index("activation") < kinds.index("maxpool")
    _, plan = _stem(poly=True)  # a channel-wise activation with polynomials, then a pool
    kinds = [op.kind for op in plan.ops]
    last_act = max(i for i, k in enumerate(kinds) if k == "activation")
    assert kinds[last_act + 1] == "maxpool"
