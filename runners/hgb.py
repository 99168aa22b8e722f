"""Gradient-boosted trees: the strongest single fraud classifier."""

from models.members import SCORE
from runners.factory import build_runner

HgbRunner = build_runner("hgb", SCORE["hgb"])
