"""Isolation forest fitted on legitimate traffic: an anomaly score, higher is stranger."""

from runners.factory import build_runner

IforestRunner = build_runner("iforest")
