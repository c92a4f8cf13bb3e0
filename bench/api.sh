#!/usr/bin/env bash
# Manager API throughput and latency on loopback: a release `skychimpd run` on a scratch
# repository (SQLite in /dev/shm when it exists), then the api_load example for signed
# GET /v1/stats and POST …/disable. Prints one line per case.
#
#   bench/api.sh [THREADS] [COUNT]          (defaults 4 and 5000)
#   REDIS=redis://127.0.0.1:6379 bench/api.sh   the same with Redis (replay store and cache)
#
# Every request is distinct (replay protection): GET /v1/stats?n=I misses the response
# cache each time, POST bodies carry "bench I"; the "cached" case repeats GET /v1/stats with
# a distinct (ignored) body, so the cache answers. Results go in bench/API-RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${1:-4}
COUNT=${2:-5000}
cargo build --release -q -p skychimpd --bin skychimpd --example api_load
BIN=target/release/skychimpd
LOAD=target/release/examples/api_load
base=/tmp; [ -d /dev/shm ] && base=/dev/shm
dir=$(mktemp -d "$base/skychimp-api-bench.XXXXXX")
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
secret=bench-secret
cleanup() { [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT

mkdir -p "$dir/clients/alice" "$dir/mailings/alice"
printf '[alice]\nemail = "alice@example.com"\nname = "Alice"\n' > "$dir/users.toml"
{ echo 'description = "bench"'; for i in $(seq 1 200); do printf '[[client]]\nemail = "c%d@example.net"\nname = "C %d"\n' "$i" "$i"; done; } > "$dir/clients/alice/people.toml"
for m in bench other third; do
  printf 'title = "%s"\nlists = ["people"]\nstart = 2099-01-01T00:00:00\nevery = "weekly"\n[message]\nsubject = "s"\nbody = "b"\n' "$m" > "$dir/mailings/alice/$m.toml"
done
printf '[site]\nrebuild = false\n[manager]\nthreads = 4\n' > "$dir/config.toml"

SKYCHIMP_REDIS_URL=${REDIS:-} SKYCHIMP_MANAGER_KEY_OPS=$secret SKYCHIMP_MANAGER_LISTEN=127.0.0.1:$port \
SKYCHIMP_USERS_REQUIRE_VERIFICATION=false SKYCHIMP_TOKEN_SECRET=bench-token-secret-0123 \
RUST_LOG=warn "$BIN" run --root "$dir" 2>"$dir/daemon.log" &
pid=$!
for _ in $(seq 1 200); do curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break; sleep 0.05; done

echo "# $(date -u +%FT%TZ) $(nproc) cores, manager.threads = 4, $THREADS client threads, $COUNT requests each, redis: ${REDIS:-off}"
"$LOAD" "http://127.0.0.1:$port" "$secret" get "$THREADS" "$COUNT"
"$LOAD" "http://127.0.0.1:$port" "$secret" cached "$THREADS" "$COUNT"
"$LOAD" "http://127.0.0.1:$port" "$secret" disable "$THREADS" "$COUNT" alice/bench
"$LOAD" "http://127.0.0.1:$port" "$secret" get 1 "$COUNT"
"$LOAD" "http://127.0.0.1:$port" "$secret" disable 1 "$COUNT" alice/bench
echo "audit rows: $(sqlite3 "$dir/var/skychimp.db" 'select count(*) from audit')"
