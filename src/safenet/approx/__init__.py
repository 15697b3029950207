"""SAFENet's approximation: channel scoring (:mod:`.scoring`), fine-tuning
(:mod:`.finetune`), the latency model (:mod:`.cost`), the accuracy- and latency-aware search
with SAFENet's and Delphi's planners (:mod:`.search`, its trials run by :mod:`.runners`), and
the search as a job (:mod:`.approximate`: ``safenet.approximate`` on any model,
``approximate_checkpoint`` for ``safenet approximate``)."""

from safenet.approx.scoring import CRITERIA, ranking_agreement, score_channels

__all__ = ["CRITERIA", "ranking_agreement", "score_channels"]
