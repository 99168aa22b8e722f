"""fraud-stream: score transactions from a Redis stream or a Kafka topic, at least once, nothing lost.

  fraud-stream worker                       # one consumer of the group; run several to share the load
  fraud-stream worker --broker kafka --bootstrap 127.0.0.1:9092
  fraud-stream produce --generate 10000 --rate 500
  fraud-stream produce --file txns.csv --id-column txn_id
  fraud-stream stats                        # stream lengths, group lag, pending per consumer

Messages: one field "data" with a JSON object of one transaction (plus optional "txn_id").
Scores go to FRAUD_STREAM_OUTPUT, scores at or above the threshold also to FRAUD_STREAM_ALERTS,
messages that cannot be scored to FRAUD_STREAM_DEAD_LETTER with the reason. Settings: FRAUD_REDIS_URL,
FRAUD_STREAM_* (see README). On Kafka (--broker kafka) the message value is that JSON object, and the
topics are FRAUD_KAFKA_INPUT_TOPIC, FRAUD_KAFKA_OUTPUT_TOPIC, FRAUD_KAFKA_ALERTS_TOPIC and
FRAUD_KAFKA_DEAD_LETTER_TOPIC. The worker stops gracefully on SIGTERM / Ctrl-C (finishes its batch).
exit status: 0 done, 2 bad input or usage, 3 models or the broker unavailable.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
from dataclasses import asdict
from pathlib import Path
from types import FrameType

from threadpoolctl import threadpool_limits

from fraudserve import tracing
from fraudserve.errors import FraudServeError, InvalidInput, ModelStoreError, Unavailable
from fraudserve.settings import Settings, get_settings

from .broker import Broker
from .producer import from_file, generated, produce
from .redis_broker import RedisStreams
from .worker import StreamWorker, WorkerConfig

log = logging.getLogger("fraud-stream")


def build_parser(settings: Settings) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fraud-stream", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--redis-url", default=settings.redis_url, help="default FRAUD_REDIS_URL")
    p.add_argument("-v", "--verbose", action="store_true", help="log every reclaim and batch decision")
    sub = p.add_subparsers(dest="command", required=True)
    # On each subcommand, so that `fraud-stream worker --broker kafka` reads as it is documented.
    brokers = argparse.ArgumentParser(add_help=False)
    brokers.add_argument(
        "--broker", choices=("redis", "kafka"), default=settings.stream_broker, help="default FRAUD_STREAM_BROKER"
    )
    brokers.add_argument("--bootstrap", default=settings.kafka_bootstrap, help="Kafka: default FRAUD_KAFKA_BOOTSTRAP")

    w = sub.add_parser(
        "worker", parents=[brokers], help="consume, score, write scores / alerts / dead letters, acknowledge"
    )
    w.add_argument("--consumer", default=f"{socket.gethostname()}-{os.getpid()}", help="name in the group")
    w.add_argument("--batch-size", type=_positive, default=settings.stream_batch_size, help="messages per read")
    w.add_argument("--block-ms", type=_positive, default=settings.stream_block_ms)
    w.add_argument("--claim-idle-ms", type=_positive, default=settings.stream_claim_idle_ms)
    w.add_argument("--claim-interval-ms", type=_positive, default=settings.stream_claim_interval_ms)
    w.add_argument("--max-deliveries", type=_positive, default=settings.stream_max_deliveries)
    w.add_argument("--metrics-port", type=int, default=settings.stream_metrics_port, help="0: no /metrics")
    w.add_argument("--model-version", default=settings.model_version, help="ensemble version in the model store")

    pr = sub.add_parser("produce", parents=[brokers], help="append transactions to the input stream")
    source = pr.add_mutually_exclusive_group(required=True)
    source.add_argument("--generate", type=_positive, metavar="N", help="N seeded generated transactions")
    source.add_argument("--file", type=Path, help="a .csv or .jsonl file of transactions")
    pr.add_argument("--seed", type=int, default=7, help="seed of --generate (7)")
    pr.add_argument("--id-column", help="CSV column sent as txn_id")
    pr.add_argument("--rate", type=float, help="messages per second (default: as fast as possible)")
    pr.add_argument(
        "--maxlen",
        type=_positive,
        help="Redis: trim the input stream to this many messages, never one the consumer group has not acknowledged",
    )

    st = sub.add_parser("stats", parents=[brokers], help="stream lengths, consumer-group lag and pending messages")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def main(argv: list[str] | None = None) -> int:
    settings = get_settings()
    args = build_parser(settings).parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose or args.command == "worker" else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        logging.getLogger("bentoml").setLevel(logging.WARNING)
    try:
        if args.command == "worker":
            return run_worker(args, settings)
        if args.command == "produce":
            return run_produce(args, settings)
        return run_stats(args, settings)
    except InvalidInput as exc:
        print(f"fraud-stream: error: {exc.field or ''} {exc.message}".replace("  ", " "), file=sys.stderr)
        return 2
    except (ModelStoreError, Unavailable) as exc:
        print(f"fraud-stream: error: {exc.message}", file=sys.stderr)
        return 3
    except FraudServeError as exc:
        print(f"fraud-stream: error: {exc.message}", file=sys.stderr)
        return 1


def run_worker(args: argparse.Namespace, settings: Settings) -> int:
    from fraudserve.local import local_core

    tracing.configure_cli(settings, f"fraud-stream:{args.consumer}")

    core = local_core(settings, args.model_version)
    broker = connect(args, settings, args.consumer)
    config = WorkerConfig(
        consumer=args.consumer,
        batch_size=args.batch_size,
        block_ms=args.block_ms,
        claim_idle_ms=args.claim_idle_ms,
        claim_interval_ms=args.claim_interval_ms,
        max_deliveries=args.max_deliveries,
        fault_hold_dir=settings.stream_fault_hold_dir,
    )
    # Micro-batches are small: BLAS/OpenMP thread pools only add contention (measured ~4x slower on
    # a busy 2-core box); run more workers for more cores instead.
    with threadpool_limits(settings.runner_threads), StreamWorker(broker, core, config) as worker:
        return _serve(worker, broker, args, settings)


def connect(args: argparse.Namespace, settings: Settings, consumer: str) -> Broker:
    if args.broker == "kafka":
        from .kafka_broker import KafkaBroker

        return KafkaBroker.connect(settings, consumer, bootstrap=args.bootstrap)
    return RedisStreams.connect(settings, consumer, url=args.redis_url)


def names(args: argparse.Namespace, settings: Settings) -> tuple[str, str]:
    """Input and output stream (Redis) or topic (Kafka)."""
    if args.broker == "kafka":
        return settings.kafka_input_topic, settings.kafka_output_topic
    return settings.stream_input, settings.stream_output


def _serve(worker: StreamWorker, broker: Broker, args: argparse.Namespace, settings: Settings) -> int:
    def stop(signum: int, frame: FrameType | None) -> None:
        log.info("%s: finishing the batch in flight", signal.Signals(signum).name)
        worker.request_stop()
        # A second signal interrupts at once; the unacknowledged batch is reclaimed by another consumer.
        signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if args.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port)
    log.info(
        "scoring %s %s -> %s as %s/%s (model %s, metrics :%s)",
        args.broker,
        *names(args, settings),
        settings.stream_group,
        args.consumer,
        worker.core.spec.version,
        args.metrics_port or "off",
    )
    try:
        worker.run()
    finally:
        broker.close()
        tracing.shutdown_cli()
    return 0


def run_produce(args: argparse.Namespace, settings: Settings) -> int:
    if args.broker == "kafka" and args.maxlen is not None:
        raise InvalidInput("Kafka topics are trimmed by their retention settings, not by --maxlen", field="maxlen")
    messages = generated(args.generate, args.seed) if args.generate else from_file(args.file, args.id_column)
    broker = connect(args, settings, "producer")
    try:
        report = produce(broker, messages, rate_per_s=args.rate, maxlen=args.maxlen)
    finally:
        broker.close()
    print(
        f"sent {report.sent} messages to {names(args, settings)[0]}"
        f" in {report.elapsed_s:.2f} s ({report.rate_per_s:.0f}/s)"
    )
    if args.maxlen is not None:
        print(f"trimmed {report.trimmed} acknowledged messages (--maxlen {args.maxlen})")
        if report.kept_over_maxlen:
            print(
                f"kept {report.kept_over_maxlen} messages beyond --maxlen: not yet delivered to or acknowledged by"
                " the consumer group (start more workers, or wait)"
            )
    return 0


def run_stats(args: argparse.Namespace, settings: Settings) -> int:
    broker = connect(args, settings, "stats")
    try:
        stats = broker.stats()
    finally:
        broker.close()
    if args.json:
        print(json.dumps(asdict(stats), indent=2))
        return 0
    lag = "unknown" if stats.lag is None else stats.lag
    print(f"input {names(args, settings)[0]}: {stats.length} messages, lag {lag}, pending {stats.pending}")
    for name, pending in sorted(stats.consumers.items()):
        print(f"  consumer {name}: {pending} pending")
    for kind, n in stats.outputs.items():
        print(f"{kind}: {n} entries")
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


if __name__ == "__main__":
    sys.exit(main())
