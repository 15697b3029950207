"""Errors a user of the Python API can act on (issue 13): shapes given with a batch
dimension, and a secure run whose spawned party cannot start."""

import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
import torch.nn as nn

import safenet
from safenet.benchmark import random_plan
from safenet.protocol.session import encode_input


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 17 * 21, 10))


def test_compile_says_the_shape_has_no_batch_dimension():
    with pytest.raises(ValueError, match=r"without the batch dimension.*pass \(3, 19, 23\)"):
        safenet.compile(_net(), (1, 3, 19, 23))


def test_compile_gives_the_models_own_shape_error_in_a_sentence():
    with pytest.raises(ValueError, match="to have 3 channels, but got 1") as err:
        safenet.compile(_net(), (1, 19, 23))
    assert "\n" not in str(err.value)
    assert safenet.compile(_net(), (3, 19, 23)).input_shape == (3, 19, 23)


def test_a_batched_input_is_named_as_such():
    plan = random_plan("lenet5", (1, 28, 28), width=2)
    with pytest.raises(ValueError, match=r"without the batch dimension \(pass x\[0\]\)"):
        encode_input(plan, np.zeros((1, 1, 28, 28)))


def test_run_local_from_stdin_fails_at_once_with_a_sentence(tmp_path):
    """A script piped to ``python -``: the spawned party cannot re-import ``<stdin>``; the
    caller hears so in seconds (it used to wait out the whole timeout, or block forever
    writing the plan to a child that had died)."""
    script = textwrap.dedent("""
        import numpy as np
        from safenet.benchmark import random_plan
        from safenet.secure import run_local
        plan = random_plan("lenet5", (1, 28, 28), width=2)
        run_local(plan, np.zeros((1, 28, 28)), timeout=300)
    """)
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-"], input=script, text=True, capture_output=True,
                         cwd=tmp_path, timeout=120)  # fmt: skip
    assert out.returncode != 0 and time.perf_counter() - t < 60
    assert "SecureRunError" in out.stderr and "if __name__ == '__main__'" in out.stderr


def test_an_unsupported_layer_is_named_with_its_type_and_what_is_supported():
    from safenet.plan.ir import UnsupportedLayerError

    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Upsample(scale_factor=2), nn.Flatten(),
                        nn.Linear(4 * 34 * 42, 2))  # fmt: skip
    with pytest.raises(UnsupportedLayerError, match=r"Upsample 1; supported: Conv2d"):
        safenet.compile(net, (3, 19, 23))


class _Squash(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)

    def forward(self, x):
        y = self.conv(x)
        return torch.sigmoid(y).flatten(1)  # the line the error must point at


def test_an_unsupported_operation_names_its_source_line():
    from safenet.plan.ir import UnsupportedLayerError

    with pytest.raises(UnsupportedLayerError) as info:
        safenet.compile(_Squash(), (1, 6, 6))
    msg = str(info.value)
    assert "unsupported operation sigmoid" in msg and "supported: Conv2d" in msg
    assert f"{__file__}:" in msg and "torch.sigmoid(y).flatten(1)" in msg


def test_pooling_variants_the_plan_cannot_express_are_refused():
    """divisor_override, a non-square stride and mean(..., keepdim) in positional form were
    lowered to wrong plans (or crashed); they are refused by name."""
    import torch.nn.functional as F

    from safenet.plan.ir import UnsupportedLayerError

    class Override(nn.Module):
        def forward(self, x):
            return F.avg_pool2d(x, 2, divisor_override=1)

    class Stride(nn.Module):
        def forward(self, x):
            return F.avg_pool2d(x, 2, (2, 1))

    class KeepDim(nn.Module):
        def forward(self, x):
            return x.mean((2, 3), True)

    for net in (Override(), Stride(), KeepDim()):
        with pytest.raises(UnsupportedLayerError):
            safenet.compile(net, (1, 4, 4))


def test_clamp_with_only_a_lower_bound_of_zero_is_a_relu():
    from safenet.nn import surgery

    class Clamped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)

        def forward(self, x):
            return torch.clamp(self.conv(x), min=0).flatten(1)

    torch.manual_seed(0)
    net = Clamped().eval()
    plan = safenet.compile(net, (1, 5, 5))
    acts = [op for op in plan.ops if op.kind == "activation"]
    assert len(acts) == 1 and acts[0].attrs.clip is None and "clip" not in acts[0].attrs.to_json()
    x = np.random.default_rng(0).normal(size=(1, 5, 5))
    assert (
        np.abs(plan.reference(x) - net.double()(torch.tensor(x)[None]).detach().numpy()[0]).max()
        < 0.02
    )
    assert [
        a.clip
        for a in surgery.activations(surgery.convert(Clamped(), torch.zeros(2, 1, 5, 5))).values()
    ] == [None]
