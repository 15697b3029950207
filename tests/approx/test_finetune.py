"""Fine-tuning approximated models: distillation, blend schedule, divergence recovery."""

import copy
import math

import pytest
import torch

from safenet.approx.finetune import (
    DivergenceGuard,
    FinetuneConfig,
    FinetuneDiverged,
    distillation_loss,
    finetune,
    finetune_checkpoint,
    prepare,
)
from safenet.checkpoint import Checkpoint, load
from safenet.data import ImageDataset
from safenet.nn.surgery import LayerSpec, activations
from safenet.nn.zoo import build_model
from safenet.training import TrainConfig, evaluate, train


@pytest.fixture(scope="module")
def parent(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("parent") / "minionn.pt"
    cfg = TrainConfig(arch="minionn", width=8, epochs=3, batch_size=32, limit=600, seed=0)
    return train(cfg, out, data_dir, log=lambda _m: None), out


def test_distillation_loss_is_zero_for_identical_logits_and_pure_kd():
    t = torch.randn(4, 10)
    y = torch.randint(0, 10, (4,))
    assert float(distillation_loss(t, t, y, 4.0, 1.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(distillation_loss(t + torch.randn(4, 10), t, y, 4.0, 1.0)) > 0


def test_finetune_checkpoint_keeps_accuracy_and_saves_config(parent, tmp_path, data_dir):
    ck, path = parent
    assert ck.metrics["accuracy"] > 0.5, "the parent must have learnt something"
    cfg = FinetuneConfig(epochs=2, batch_size=32, lr=0.01, limit=600, blend_epochs=1.0)
    out = tmp_path / "approx.pt"
    approx = finetune_checkpoint(ck, str(path), LayerSpec(0.5, 2), cfg, out,
                                 data_dir=data_dir, log=lambda _m: None)  # fmt: skip
    assert approx.parent == str(path)
    assert approx.activation is not None
    assert approx.metrics["relu_channel_fraction"] == pytest.approx(0.5, abs=0.05)
    assert approx.metrics["accuracy"] >= ck.metrics["accuracy"] - 0.15
    assert [h["blend"] for h in approx.history][-1] == 1.0
    model = load(out).build()
    acts = activations(model)
    assert len(acts) == 7
    for a in acts.values():
        assert float(a.blend) == 1.0
        assert a.ratio == pytest.approx(0.5, abs=0.1)
        assert torch.isfinite(a.coefficients).all()
    ds = ImageDataset("fashion-mnist", "test", data_dir)
    assert evaluate(model, ds) == pytest.approx(approx.metrics["accuracy"])
    # range hardening checked every training image; clients hold results to its bound
    hard = approx.metrics["hardening"]
    assert hard["images"] == 600 and hard["ok"] and hard["failures"][-1] == 0
    assert approx.metrics["output_bound"] == pytest.approx(4 * hard["max_output"])
    assert hard["max_output"] > 0
    plan = load(out).plan()
    assert plan.public().info["output_bound"] == approx.metrics["output_bound"]


def test_finetune_refuses_an_already_approximated_parent(parent, tmp_path, data_dir):
    ck, _ = parent
    student, _ = prepare(ck.build(), ImageDataset("fashion-mnist", "train", data_dir, 128),
                         LayerSpec(0.5), score_batches=1, batch_size=64)  # fmt: skip
    approx = Checkpoint.from_model(student, ck.arch, ck.arch_kwargs, ck.dataset)
    with pytest.raises(ValueError, match="already approximated"):
        finetune_checkpoint(approx, "x", LayerSpec(0.5), FinetuneConfig(), tmp_path / "o.pt",
                            data_dir=data_dir)  # fmt: skip


def _student(data_dir, ratio=1.0):
    torch.manual_seed(0)
    teacher = build_model("lenet5").eval()
    ds = ImageDataset("fashion-mnist", "train", data_dir, 256)
    student, _ = prepare(teacher, ds, LayerSpec(ratio, 2), "approx-error", score_batches=1,
                         batch_size=64)  # fmt: skip
    return teacher, student, ds


def test_guard_rolls_back_and_slows_down(data_dir):
    _, student, _ = _student(data_dir)
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    guard = DivergenceGuard(student, opt, blend_steps=10, max_rollbacks=3, every=2)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    guard.advance()
    guard.accept(torch.tensor(1.0))
    guard.advance()
    guard.accept(torch.tensor(1.0))  # second good step: snapshot at blend 0.2
    snap_blend = guard.blend
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    guard.advance()
    assert guard.bad(torch.tensor(float("nan")))
    assert guard.bad(torch.tensor(1e6))
    assert not guard.bad(torch.tensor(1.5))
    guard.rollback()
    assert guard.blend == snap_blend and guard.lr_scale == 0.5 and guard.rate == 0.05
    after = student.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if "blend" not in k)
    for _ in range(3):
        try:
            guard.rollback()
        except FinetuneDiverged:
            break
    else:
        pytest.fail("the guard should give up after max_rollbacks")


def _finetune_with_loss(data_dir, monkeypatch, change, save=None):
    """Fine-tune a half-polynomial student whose n-th loss (1-based) is ``change(n, loss)``;
    returns (model, history, logs)."""
    teacher, student, ds = _student(data_dir, ratio=0.5)
    import safenet.approx.finetune as ft

    real = ft.distillation_loss
    calls = {"n": 0}

    def changed(*args, **kwargs):
        calls["n"] += 1
        return change(calls["n"], real(*args, **kwargs))

    monkeypatch.setattr(ft, "distillation_loss", changed)
    logs = []
    cfg = FinetuneConfig(epochs=1, batch_size=64, lr=0.01, blend_epochs=0.5)
    model, history = finetune(student, teacher, ds, ds, cfg, save=save, log=logs.append)
    return model, history, logs


def test_finetune_recovers_from_a_poisoned_step(data_dir, monkeypatch):
    """A NaN loss mid-run is rolled back; training finishes with finite weights."""
    model, history, logs = _finetune_with_loss(
        data_dir, monkeypatch, lambda n, loss: loss * float("nan") if n == 3 else loss
    )
    assert history[-1]["rollbacks"] == 1
    assert any("rolled back" in m for m in logs)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert math.isfinite(history[-1]["train_loss"])


def test_a_finetune_slowed_by_rollbacks_still_saves_a_servable_model(data_dir, monkeypatch):
    """Rollbacks halve the blend ramp, but the blend still reaches 1 by the deadline (the
    last fifth of training is at blend 1); what is saved and scored is the model as served
    (blend 1), and it compiles."""
    from safenet.plan.compiler import compile_model

    saved = []

    def save(model, history):
        saved.append([float(a.blend) for a in activations(model).values()])
        compile_model(model.eval(), (1, 28, 28))  # refuses a blend below 1
        model.train()

    nan_at = (3, 5)  # step 3, then step 4 after the retry of step 3
    model, history, logs = _finetune_with_loss(
        data_dir, monkeypatch, lambda n, loss: loss * float("nan") if n in nan_at else loss, save
    )
    assert history[-1]["rollbacks"] == 2 and history[-1]["blend"] == 1.0
    assert saved and all(b == 1.0 for blends in saved for b in blends)
    assert all(float(a.blend) == 1.0 for a in activations(model).values())


def test_the_blend_ramp_meets_its_deadline_after_a_rollback(data_dir):
    _, student, _ = _student(data_dir, ratio=0.5)
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    guard = DivergenceGuard(student, opt, blend_steps=10, max_rollbacks=3, every=2, deadline=12)
    blends = [guard.advance() for _ in range(4)]
    guard.rollback()  # back to the snapshot at blend 0, ramp at half speed
    blends += [guard.advance() for _ in range(8)]
    assert blends[-1] == 1.0 and all(b <= 1.0 for b in blends)
    assert blends[4] < blends[3]  # slower after the rollback until the deadline forces it


@pytest.mark.parametrize("spike", [1e4, float("nan")])
def test_finetune_skips_a_batch_that_even_the_last_good_weights_blow_up_on(
    data_dir, monkeypatch, spike
):
    """A loss spike (finite, or NaN as when a cube overflows float32 deep in a degree-3
    network) that the restored weights repeat on the same batch is the batch's fault (an
    outlier input), not divergence: skipped, no slow-down, training goes on."""
    model, history, logs = _finetune_with_loss(  # step 2, before and after the rollback
        data_dir, monkeypatch, lambda n, loss: loss * spike if n in (3, 4) else loss
    )
    assert history[-1]["rollbacks"] == 0 and history[-1]["skipped_batches"] == 1, logs
    assert any("batch skipped" in m for m in logs)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert math.isfinite(history[-1]["train_loss"])


def test_a_skipped_batch_leaves_no_trace_in_batch_norm_statistics():
    """The retry of a skipped batch ran forward in training mode: its exploding activations
    must not stay in the running statistics that evaluation uses."""
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    guard = DivergenceGuard(model, opt, blend_steps=10, max_rollbacks=3)
    before = copy.deepcopy(model[1].state_dict())
    model.train()
    model(torch.randn(8, 1, 6, 6) * 1e6)  # the bad batch
    guard.rollback()
    model(torch.randn(8, 1, 6, 6) * 1e6)  # the retry, bad again: the batch is skipped
    guard.forgive()
    after = model[1].state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize(
    ("batch_size", "why"), [(128, "all 2 batches"), (32, "3 batches in a row")]
)
def test_finetune_gives_up_cleanly_when_always_diverging(data_dir, monkeypatch, batch_size, why):
    """Skipping a bad batch is bounded: more than max_rollbacks skipped in a row, or an epoch
    in which nothing trained, is divergence, and nothing is saved."""
    teacher, student, ds = _student(data_dir, ratio=0.5)
    import safenet.approx.finetune as ft

    monkeypatch.setattr(ft, "distillation_loss",
                        lambda *a, **k: torch.tensor(float("inf"), requires_grad=True))  # fmt: skip
    saved = []
    cfg = FinetuneConfig(epochs=1, max_rollbacks=2, batch_size=batch_size)
    with pytest.raises(FinetuneDiverged, match=f"{why}.*lower --lr"):
        finetune(student, teacher, ds, ds, cfg,
                 save=lambda m, h: saved.append(1), log=lambda _m: None)  # fmt: skip
    assert saved == [], "a diverged model must never be saved"
