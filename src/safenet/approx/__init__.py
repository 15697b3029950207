"""SAFENet's approximation: channel scoring (:mod:`.scoring`), fine-tuning
(:mod:`.finetune`), the latency model (:mod:`.cost`), the accuracy- and latency-aware search
(:mod:`.search`, run by :mod:`.runners`) and its Python entry point :func:`approximate`."""

from safenet.approx.scoring import CRITERIA, ranking_agreement, score_channels

__all__ = ["CRITERIA", "ranking_agreement", "score_channels"]
