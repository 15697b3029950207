"""Copy a checkpoint for shipping: drop the optimizer state (resume-only), keep the rest."""

import sys

from safenet.checkpoint import load


def main(src: str, dest: str) -> None:
    """Write ``src`` to ``dest`` without its optimizer state."""
    ck = load(src)
    ck.training = {k: v for k, v in ck.training.items() if k != "optimizer"}
    ck.save(dest)
    print(f"{dest}: {ck.arch} on {ck.dataset}, accuracy {ck.metrics['accuracy']:.4f}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
