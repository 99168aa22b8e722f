"""A seeded generator of realistic card transactions with an imbalanced fraud label.

Legitimate spending follows each customer's habits (typical amount, home area, daytime
hours, card present at shops); fraud breaks them in correlated ways (large amounts against
the 30-day average, night hours, far from home, card not present, bursts of velocity, young
accounts, risky merchant categories), with interactions a linear model cannot fully see.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fraudserve.schema import Feature, FeatureSchema

MERCHANT_CATEGORIES = (
    "grocery",
    "gas",
    "restaurant",
    "pharmacy",
    "entertainment",
    "travel",
    "online_retail",
    "electronics",
    "atm",
    "other",
)
_CATEGORY_P = np.array([0.22, 0.12, 0.16, 0.06, 0.07, 0.04, 0.17, 0.05, 0.05, 0.06])
_CATEGORY_RISK = np.array([-0.6, -0.3, -0.5, -0.6, 0.0, 0.8, 1.0, 1.2, 0.7, 0.0])

TRANSACTION_SCHEMA = FeatureSchema(
    label="is_fraud",
    features=(
        Feature(name="amount", kind="float", minimum=0.0, maximum=100_000.0, description="Amount in EUR."),
        Feature(name="hour", kind="int", minimum=0, maximum=23, description="Local hour of day."),
        Feature(name="merchant_category", kind="category", categories=MERCHANT_CATEGORIES),
        Feature(
            name="distance_from_home_km",
            kind="float",
            minimum=0.0,
            maximum=20_000.0,
            description="Distance between the merchant and the card holder's home.",
        ),
        Feature(name="card_present", kind="bool", description="Chip or contactless at a terminal."),
        Feature(name="is_foreign", kind="bool", description="Merchant country differs from the card's."),
        Feature(
            name="txn_count_1h", kind="int", minimum=0, maximum=1_000, description="Card transactions in the last hour."
        ),
        Feature(
            name="txn_count_24h",
            kind="int",
            minimum=0,
            maximum=10_000,
            description="Card transactions in the last 24 hours.",
        ),
        Feature(
            name="amount_avg_30d",
            kind="float",
            minimum=0.0,
            maximum=100_000.0,
            description="Card holder's average transaction amount over 30 days.",
        ),
        Feature(name="account_age_days", kind="int", minimum=0, maximum=36_500, description="Age of the account."),
    ),
)

TARGET_FRAUD_RATE = 0.015


def generate_transactions(n_rows: int, seed: int = 7, fraud_rate: float = TARGET_FRAUD_RATE) -> pd.DataFrame:
    """``n_rows`` transactions with the columns of TRANSACTION_SCHEMA plus the label."""
    if n_rows < 1:
        raise ValueError("n_rows must be at least 1")
    rng = np.random.default_rng(seed)
    avg_30d = np.round(rng.lognormal(mean=3.6, sigma=0.7, size=n_rows), 2)
    category = rng.choice(len(MERCHANT_CATEGORIES), size=n_rows, p=_CATEGORY_P)
    hour = np.clip(np.round(rng.normal(14, 4.5, n_rows)), 0, 23).astype(int) % 24
    is_foreign = rng.random(n_rows) < 0.05
    distance = np.where(is_foreign, rng.lognormal(7.0, 0.8, n_rows), rng.lognormal(1.5, 1.1, n_rows))
    online = np.isin(category, [MERCHANT_CATEGORIES.index("online_retail")])
    card_present = np.where(online, False, rng.random(n_rows) < 0.93)
    count_24h = rng.poisson(3.0, n_rows)
    count_1h = np.minimum(rng.poisson(0.4, n_rows), count_24h)
    account_age = np.round(rng.gamma(2.0, 900.0, n_rows)).astype(int)
    amount = avg_30d * rng.lognormal(0.0, 0.6, n_rows)

    # Latent fraud intent; when a row is fraud its observable features are pushed further.
    night = (hour <= 5) | (hour >= 23)
    risk = (
        1.2 * np.log1p(amount / (avg_30d + 1.0))
        + 0.9 * night
        + 0.35 * np.log1p(distance / 50.0)
        + 1.1 * (~card_present) * (count_1h >= 2)
        + 0.5 * np.log1p(count_1h)
        + 0.8 * (account_age < 60)
        + _CATEGORY_RISK[category]
        + 0.9 * is_foreign * night
    )
    logits = risk + rng.normal(0.0, 1.6, n_rows)
    cut = np.quantile(logits, 1.0 - fraud_rate)
    label = logits >= cut

    k = int(label.sum())
    amount[label] *= rng.lognormal(0.4, 0.7, k)
    count_1h[label] += rng.poisson(0.8, k)
    count_24h[label] = np.maximum(count_24h[label], count_1h[label]) + rng.poisson(3.0, k)
    night_fraud = label & (rng.random(n_rows) < 0.35)
    hour[night_fraud] = rng.choice([23, 0, 1, 2, 3, 4, 5], size=int(night_fraud.sum()))
    young = label & (rng.random(n_rows) < 0.25)
    account_age[young] = rng.integers(0, 60, size=int(young.sum()))
    far = label & (rng.random(n_rows) < 0.25)
    distance[far] *= rng.lognormal(2.0, 1.0, int(far.sum()))

    frame = pd.DataFrame(
        {
            "amount": np.round(np.clip(amount, 0.01, 100_000.0), 2),
            "hour": hour,
            "merchant_category": np.asarray(MERCHANT_CATEGORIES, dtype=object)[category],
            "distance_from_home_km": np.round(np.clip(distance, 0.0, 20_000.0), 3),
            "card_present": card_present.astype(bool),
            "is_foreign": is_foreign.astype(bool),
            "txn_count_1h": np.clip(count_1h, 0, 1_000),
            "txn_count_24h": np.clip(count_24h, 0, 10_000),
            "amount_avg_30d": np.clip(avg_30d, 0.0, 100_000.0),
            "account_age_days": np.clip(account_age, 0, 36_500),
            "is_fraud": label.astype(int),
        }
    )
    return frame
