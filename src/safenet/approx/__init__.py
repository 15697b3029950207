"""SAFENet's approximation: channel scoring and fine-tuning (the search comes with issue 4)."""

from safenet.approx.scoring import CRITERIA, ranking_agreement, score_channels

__all__ = ["CRITERIA", "ranking_agreement", "score_channels"]
