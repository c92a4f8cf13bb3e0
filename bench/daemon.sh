#!/usr/bin/env bash
# Daemon benchmarks (issue 4): reload time of the 1,000-mailing / 1,000,000-client repository,
# time from saving a changed mailing file to the daemon acting on it, and idle CPU over a
# minute. Usage: bench/daemon.sh [IDLE_SECONDS]   (run from the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
idle=${1:-60}
cargo build --release -q -p skychimpd --bin skychimpd --example gen_repo
bin=$PWD/target/release/skychimpd
work=$(mktemp -d /dev/shm/skychimp-bench.XXXXXX)
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
port=$((20000 + RANDOM % 20000))
export NO_COLOR=1 SKYCHIMP_USERS_REQUIRE_VERIFICATION=false SKYCHIMP_MANAGER_LISTEN=127.0.0.1:$port \
  SKYCHIMP_SITE_REBUILD=false SKYCHIMP_SMTP_URL="outbox:$work/outbox" SKYCHIMP_DATABASE_URL="sqlite://$work/db.sqlite"

wait_for() { # LOG PATTERN COUNT: until the log has COUNT lines matching PATTERN (60 s at most)
  for _ in $(seq 600); do
    [ "$(grep -c -- "$2" "$1" || true)" -ge "$3" ] && return 0
    sleep 0.1
  done
  echo "timed out waiting for '$2' in $1" >&2; exit 1
}

echo "== reload of the large repository (100 users, 1,000 mailings, 1,000,000 clients)"
./target/release/examples/gen_repo "$work/big" >/dev/null
# Starts in the future so loading it sends nothing.
sed -i 's/start = 2027-01-01T09:00:00/start = 2099-01-01T09:00:00/' "$work"/big/mailings/*/mailing*.toml
"$bin" --root "$work/big" run 2>"$work/big.log" & pid=$!
wait_for "$work/big.log" "listening on" 1
for i in 1 2 3; do
  touch "$work/big/users.toml"; echo "# $i" >> "$work/big/users.toml"
  wait_for "$work/big.log" "catalog reloaded" "$i"
done
grep "catalog reloaded" "$work/big.log" | sed 's/.*catalog reloaded/catalog reloaded/'
echo "peak RSS of the daemon: $(grep VmHWM /proc/$pid/status | awk '{print $2, $3}')"
kill -TERM "$pid"; wait "$pid" || true; pid=""

echo "== save → act: a new mailing inside its interval, from the file's write to its run"
small="$work/small"; mkdir -p "$small"
git ls-files users.toml clients mailings | xargs -I{} cp --parents {} "$small/"
"$bin" --root "$small" run 2>"$work/small.log" & pid=$!
wait_for "$work/small.log" "listening on" 1
for i in 1 2 3 4 5; do
  before=$(date +%s%N)
  printf 'title = "Now %s"\nlists = ["newsletter"]\nstart = 2020-01-01T00:00:00\nevery = "once"\n[message]\nsubject = "s"\nbody = "b"\n' "$i" > "$small/mailings/alice/now$i.toml"
  wait_for "$work/small.log" "run created mailing=alice/now$i" 1
  after=$(date +%s%N)
  echo "save → run created: $(( (after - before) / 1000000 )) ms (debounce 250 ms included)"
done

echo "== idle CPU over ${idle} s (nothing due, nothing changing)"
t0=$(awk '{print $14 + $15}' /proc/$pid/stat)
sleep "$idle"
t1=$(awk '{print $14 + $15}' /proc/$pid/stat)
hz=$(getconf CLK_TCK)
awk -v d=$((t1 - t0)) -v hz="$hz" -v s="$idle" 'BEGIN { printf "CPU time in %d s idle: %.2f s (%.3f%% of one core)\n", s, d / hz, 100 * d / hz / s }'
