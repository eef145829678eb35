#!/usr/bin/env bash
# Round trip of the C example against `tickinfer serve` beside the transport floor
# (a bare busy-poll Unix-socket ping-pong with the same message sizes), in one run,
# pinned: server/echo on core ${SERVER_CORE:-1}, client on core ${CLIENT_CORE:-0}.
#   scripts/rtt_compare.sh [N=200000]
# POLLS="spin" limits the poll modes; EXTRA_SERVE_ARGS="--record /tmp/x.tkcap" adds serve flags.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-200000}
SERVER_CORE=${SERVER_CORE:-1}
CLIENT_CORE=${CLIENT_CORE:-0}
work=$(mktemp -d)
trap 'kill $(cat "$work/pid" 2>/dev/null) 2>/dev/null || true; rm -rf "$work"' EXIT
cargo build --release --quiet
cc -std=c11 -O2 -I proto benches/c/pingpong.c -o "$work/pingpong"
cc -std=c11 -O2 -I proto proto/examples/client_example.c -o "$work/client_example"
echo "host: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), clocksource $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)"
echo "== floor: busy-poll ping-pong, 194 B out / 58 B back"
"$work/pingpong" "$N" "$SERVER_CORE" "$CLIENT_CORE"
for poll in ${POLLS:-spin adaptive block}; do
  echo "== tickinfer serve --poll $poll (inline, core $SERVER_CORE) + client_example spin (core $CLIENT_CORE)"
  ./target/release/tickinfer serve --model models/lobster_direction.toml --socket "$work/s.sock" \
    --poll "$poll" --io-core "$SERVER_CORE" --stats-interval-s 0 ${EXTRA_SERVE_ARGS:-} > "$work/serve.log" 2>&1 &
  echo $! > "$work/pid"
  for _ in $(seq 100); do grep -q "ready: model" "$work/serve.log" && break; sleep 0.05; done
  taskset -c "$CLIENT_CORE" "$work/client_example" "$work/s.sock" $((N / 10)) spin 1 > /dev/null  # warm-up
  taskset -c "$CLIENT_CORE" "$work/client_example" "$work/s.sock" "$N" spin 1 | grep -E "rtt_ns|status"
  ./target/release/tickinfer stats --socket "$work/s.sock" | sed -n '/^ns/,/^total/p'
  kill -TERM "$(cat "$work/pid")"; wait "$(cat "$work/pid")" 2>/dev/null || true
done
