"""Gradient-boosted trees: the strongest single fraud classifier."""

from runners.factory import build_runner

HgbRunner = build_runner("hgb", lambda model, x: model.predict_proba(x)[:, 1])
