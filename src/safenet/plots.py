"""``safenet plot``: a checkpoint's training curve and, for approximated models, its layers.

Needs matplotlib (``pip install 'safenet[plot]'``).
"""

from __future__ import annotations

from pathlib import Path

from safenet.checkpoint import Checkpoint


def plot_checkpoint(ck: Checkpoint, out: str | Path, title: str = "") -> Path:
    """Write a PNG: test accuracy and loss per epoch; per-layer kept-ReLU share and degree."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("plotting needs matplotlib: pip install 'safenet[plot]'") from e
    panels = 2 if ck.activation else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4), squeeze=False)
    ax = axes[0][0]
    epochs = [h["epoch"] for h in ck.history]
    if epochs:
        ax.plot(epochs, [100 * h["test_accuracy"] for h in ck.history], "o-", label="test acc")
        ax.set_xlabel("epoch")
        ax.set_ylabel("test accuracy (%)")
        twin = ax.twinx()
        twin.plot(epochs, [h["train_loss"] for h in ck.history], "s--", color="grey")
        twin.set_ylabel("train loss", color="grey")
    ax.set_title(title or f"{ck.arch} on {ck.dataset}")
    if ck.activation:
        ax = axes[0][1]
        names = list(ck.activation)
        kept = [sum(c["relu_mask"]) / c["channels"] for c in ck.activation.values()]
        degrees = [c["degree"] for c in ck.activation.values()]
        colors = ["tab:blue" if d == 2 else "tab:orange" for d in degrees]
        ax.bar(range(len(names)), kept, color=colors)
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_ylabel("channels keeping ReLU")
        ax.set_title("per layer (blue: degree 2, orange: degree 3)")
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
