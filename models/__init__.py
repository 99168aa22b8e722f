"""Model identity: data generation, training and the model store. Nothing else names models."""
