"""Transport-free pieces of the fraud-detection bundle: settings, errors, features, inference core."""
