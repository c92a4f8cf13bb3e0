#!/usr/bin/env bash
# A model of the database side of `skychimpd send` (bench/RESULTS.md, run F): eight pgbench
# clients stand for eight workers sending a 100,000-recipient run, with no SMTP at all.
#   claim-then-mark.sql  what skychimpd does: lease 512 rows, then per chunk of N one
#                        statement recording the previous chunk's outcomes and marking the
#                        next N `sending`
#   claim-sending.sql    the alternative: per chunk, record and claim N rows straight into
#                        `sending`
#   hot.sql              claim-then-mark on hot-schema.sql (marking `sending` a HOT update)
#   inflight.sql         claim-then-mark without marking rows: one row per worker in a table
#                        `inflight` lists its chunk in flight (not crash-safe as written: a
#                        model of the database's cost only)
#   queue.sql            claim-then-mark on queue-schema.sql: what is due and its lease in a
#                        narrow table `due`, `status` in no index of deliveries, so the mark
#                        and the outcome are HOT updates and an outcome deletes from `due`
#   queue-inflight.sql   queue.sql with inflight.sql's list instead of the mark
#   since.sql            claim-then-mark with `sending` kept in a column no index reads
#                        (since-schema.sql), so the mark is a HOT update like the lease
#   noattempts.sql       claim-then-mark without the attempt log: what the log costs (a
#                        diagnostic; every attempt must be logged)
#   attemptspk.sql       claim-then-mark with the attempt log's primary key on (mailing_id,
#                        id), the log pages' index, instead of on id beside that index
#                        (attemptspk-schema.sql)
#   (since, noattempts and attemptspk are written below as edits of claim-then-mark.sql, queue-inflight
#   as one of queue.sql and inflight.sql, not as files)
# Usage: bench/claim-model/run.sh [SCRIPT-N…]  (default: claim-then-mark-16 claim-sending-16
# claim-then-mark-64 claim-sending-64; N divides 512). Prints chunks per second (pgbench's
# tps); rows per second is that times N; and the CPU seconds PostgreSQL used for the
# 100,000 rows (bench/cpu.py; a server on this machine). Needs psql and pgbench on the server.
# KEEPDB=1 leaves the last script's database (skychimp_claim_model) for inspection.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
migrations="$here/../../storage/migrations/postgres"
PG_HOST="${PG_HOST:-127.0.0.1}" PG_USER="${PG_USER:-postgres}" DB=skychimp_claim_model
psql_() { PGOPTIONS="-c client_min_messages=warning" psql -X -q -v ON_ERROR_STOP=1 -h "$PG_HOST" -U "$PG_USER" "$@"; }
scripts=("$@")
[[ ${#scripts[@]} -gt 0 ]] || scripts=(claim-then-mark-16 claim-sending-16 claim-then-mark-64 claim-sending-64)
cpu="$(mktemp -d)"
[[ -n "${KEEPDB:-}" ]] || trap 'psql_ -d postgres -c "DROP DATABASE IF EXISTS $DB" >/dev/null 2>&1 || true; rm -rf "$cpu"' EXIT
# The variants that differ from claim-then-mark.sql by a few clauses, made from it so that
# its statements are written once: the script's text on stdout.
variant() { # variant FILE
    local base="$here/claim-then-mark.sql"
    case "$1" in
        since.sql) sed -e "s/ORDER BY next_attempt_at, id LIMIT/AND sending_since IS NULL &/" \
            -e "s/lease_until = NULL, updated_at = o.at/lease_until = NULL, sending_since = NULL, updated_at = o.at/" \
            -e "s/m AS (UPDATE deliveries SET status = 'sending', updated_at = now()/m AS (UPDATE deliveries SET sending_since = now()/" \
            "$base" ;;
        queue-inflight.sql) # queue.sql's mark (line 15) and result (16) as inflight.sql's
            { sed -n '1,14p' "$here/queue.sql"
              sed -n '/^m AS (INSERT INTO inflight/p; /^SELECT (SELECT count/p' "$here/inflight.sql" |
                  sed -e 's/ FROM deliveries WHERE id = ANY/ FROM due WHERE id = ANY/' \
                      -e "s/ AND status NOT IN ('sending', 'sent', 'failed', 'skipped', 'unknown') ON CONFLICT/ ON CONFLICT/"
              sed -n '17,$p' "$here/queue.sql"; } ;;
        noattempts.sql) sed -e 's/^a AS (INSERT INTO attempts .*$/a AS (SELECT 1 FROM u),/' "$base" ;;
        attemptspk.sql) cat "$base" ;;
        *) cat "$here/$1" ;;
    esac
}
for script in "${scripts[@]}"; do
    chunk="${script##*-}" file="${script%-*}.sql"
    variant "$file" >"$cpu/script.sql"
    psql_ -d postgres -c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB" >/dev/null
    for m in "$migrations"/*.sql; do psql_ -d "$DB" -f "$m" >/dev/null; done
    [[ "$file" != hot.sql ]] || psql_ -d "$DB" -f "$here/hot-schema.sql" >/dev/null
    [[ "$file" != since.sql ]] || psql_ -d "$DB" -f "$here/since-schema.sql" >/dev/null
    [[ "$file" != attemptspk.sql ]] || psql_ -d "$DB" -f "$here/attemptspk-schema.sql" >/dev/null
    [[ "$file" != queue*.sql ]] || psql_ -d "$DB" -f "$here/queue-schema.sql" >/dev/null
    psql_ -d "$DB" -c "CREATE TABLE inflight (worker TEXT PRIMARY KEY, ids BIGINT[] NOT NULL)" >/dev/null
    psql_ -d "$DB" >/dev/null <<'SQL'
INSERT INTO runs (mailing_id, owner, occurrence, kind, created_at, mailing_blob, subject, body)
VALUES ('alice/news', 'alice', now(), 'manual', now(), 'x', 's', 'b');
INSERT INTO deliveries (run_id, address, email, name, comment, status, attempts, next_attempt_at, updated_at)
SELECT 1, 'client' || lpad(g::text, 7, '0') || '@example.com', 'client' || g || '@example.com',
       'Client ' || g, NULL, 'queued', 0, now(), now()
FROM generate_series(1, 100000) g;
SQL
    [[ "$file" != queue*.sql ]] || psql_ -d "$DB" -c "INSERT INTO due (id, at) SELECT id, next_attempt_at FROM deliveries" >/dev/null
    # 100,000 rows / 8 clients / N rows per transaction.
    per_client=$((100000 / 8 / chunk))
    printf '%-20s ' "$script"
    "$here/../cpu.py" snap "$cpu/before"
    tps="$(pgbench -h "$PG_HOST" -U "$PG_USER" -n -M prepared -c 8 -j 2 -t "$per_client" \
        -D k=0 -D "chunk=$chunk" -D 'prev={}' -D 'batch={}' -f "$cpu/script.sql" "$DB" 2>&1 | grep -E '^tps')"
    "$here/../cpu.py" snap "$cpu/after"
    echo "$tps; CPU $("$here/../cpu.py" diff "$cpu/before" "$cpu/after" | sed 's/ smtp-sink=.*//')"
done
