"""Gradient-boosted trees: the strongest single fraud classifier."""

from runners.factory import build_runner

HgbRunner = build_runner("hgb")
