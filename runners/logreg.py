"""Scaled logistic regression: a calibrated linear view of the same features."""

from models.members import SCORE
from runners.factory import build_runner

LogregRunner = build_runner("logreg", SCORE["logreg"])
