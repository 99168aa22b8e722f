#!/usr/bin/env bash
# A project-local redis-server for fraud-stream: loopback only, AOF on, files in data/redis/.
# Usage: scripts/redis.sh start|stop|status   (port: REDIS_PORT, default 6379)
# Then: FRAUD_REDIS_URL=redis://127.0.0.1:${REDIS_PORT:-6379}/0 .venv/bin/fraud-stream worker
set -euo pipefail
cd "$(dirname "$0")/.."

PORT="${REDIS_PORT:-6379}"
DIR="$PWD/data/redis"
PIDFILE="$DIR/redis-$PORT.pid"

running() { [[ -f "$PIDFILE" ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

case "${1:-}" in
start)
    bash scripts/system-deps.sh redis
    if running; then
        echo "redis already running on 127.0.0.1:$PORT (pid $(cat "$PIDFILE"))"
        exit 0
    fi
    mkdir -p "$DIR"
    redis-server --port "$PORT" --bind 127.0.0.1 --save "" --appendonly yes --dir "$DIR" \
        --daemonize yes --pidfile "$PIDFILE" --logfile "$DIR/redis-$PORT.log"
    for _ in $(seq 50); do
        redis-cli -p "$PORT" ping >/dev/null 2>&1 && break
        sleep 0.1
    done
    redis-cli -p "$PORT" ping >/dev/null || { echo "redis did not start; see $DIR/redis-$PORT.log" >&2; exit 1; }
    echo "redis on redis://127.0.0.1:$PORT/0 (pid $(cat "$PIDFILE"), data in $DIR)"
    ;;
stop)
    if ! running; then
        echo "redis is not running on port $PORT"
        exit 0
    fi
    pid="$(cat "$PIDFILE")"
    kill "$pid"
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    rm -f "$PIDFILE"
    echo "redis on port $PORT stopped"
    ;;
status)
    if running; then echo "running (pid $(cat "$PIDFILE"), port $PORT)"; else echo "stopped"; exit 1; fi
    ;;
*)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
