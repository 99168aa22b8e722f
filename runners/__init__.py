"""One BentoML service per model: the runners the entry service composes."""
