"""Scaled logistic regression: a calibrated linear view of the same features."""

from runners.factory import build_runner

LogregRunner = build_runner("logreg")
