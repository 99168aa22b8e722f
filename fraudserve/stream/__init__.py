"""Streaming inference: a consumer-group worker scoring transactions from a message stream.

``fraud-stream worker`` reads micro-batches, scores them in-process with the same inference core as
the served bundle, writes each score (and each alert) and acknowledges the messages in one atomic
step: at-least-once delivery with idempotent outputs. The broker sits behind ``broker.Broker``:
Redis Streams (``redis_broker``) or Kafka (``kafka_broker``, outputs keyed by source, then offsets).
"""
