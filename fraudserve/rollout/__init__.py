"""Staged rollouts: traffic policies between model versions, shadow scoring, a response cache.

- ``policy``: the Policy (single, canary, ab, shadow, blue_green) and the Router that applies it.
- ``state``: the policy shared by every API worker through a JSON file (current + previous).
- ``cache``: an in-process LRU + TTL cache of scored rows, keyed by model version and input row.
- ``engine``: what the inference core calls: route, cache, shadow, per-variant metrics.
- ``admin``: the admin API's functions and its guard.
- ``versions``: the version code the runners receive beside the features.
"""
