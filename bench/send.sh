#!/usr/bin/env bash
# Benchmark of `skychimpd send` (issue 3): how fast one run of N recipients goes through SMTP
# with every attempt logged in the database, next to what the SMTP path itself can do
# (Postfix smtp-source) and what the original Django app did (send_mail in a loop).
#
# Everything runs against one Postfix smtp-sink on a free 127.0.0.1 port; nothing leaves the
# machine. It prints numbers; it asserts nothing about speed, only that the run was complete
# (N deliveries `sent`, N attempt rows).
#
# Usage (from the repository root, after `cargo build --release -p skychimpd`):
#   bench/send.sh [STEP…]      steps: skychimpd source django django-orm memory
#                              (default: skychimpd source django django-orm memory)
#
# Environment:
#   N=100000              recipients of the skychimpd run and messages of smtp-source
#   C=8                   SKYCHIMP_SMTP_CONCURRENCY and smtp-source sessions
#   M=5000                messages of the Django loops
#   SIZES="10000 50000 100000"   N of the memory step
#   BACKEND=postgres      or sqlite: where skychimpd logs (to tell the database's share)
#   PG=postgres://postgres@127.0.0.1:5432   server for fresh skychimp_bench_* databases
#   BATCH=                SKYCHIMP_DELIVERY_BATCH (empty: the configured default)
#   CHUNK=                SKYCHIMP_DELIVERY_CHUNK (empty: the configured default)
#   PGURLOPTS=            appended to the PostgreSQL URL of the skychimpd step, e.g.
#                         '?options=-c%20synchronous_commit%3Doff' to see what commits cost
#   STEP_TIMEOUT=900      seconds before one step is killed
#   PERF=0                1: record `perf record -g` of the skychimpd step into target/bench/
#   PERFOPTS=-g           perf record's options, e.g. '--call-graph dwarf -F 999' for call
#                         chains through code built without frame pointers
#   PGSAMPLE=0            1: sample pg_stat_activity every 0.1 s during each PostgreSQL run
#                         and print what the busy backends were doing (the database's side)
#   KEEP=0                1: keep the generated repository and database for inspection
#   BIN=target/release/skychimpd   the binary to time (to compare two builds)
#   SINKOPTS=             more smtp-sink options, e.g. '-w 1' (wait a second before
#                         answering DATA: a slow relay)
#
# Requires: psql (trust auth on $PG), python3 (Django is pip-installed into
# target/bench-venv on first use), /usr/bin/time, apt-get (scripts/smtp-sink.sh fetches
# smtp-sink/smtp-source). Cleans up what it starts: the sink (by pid), the databases it
# created and its temporary folder.
#
# Each skychimpd line ends with the CPU seconds PostgreSQL and smtp-sink used during the run
# (bench/cpu.py reads /proc: PostgreSQL counts only when the server runs on this machine);
# the smtp-source line with smtp-source's and smtp-sink's; `skychimpd source` in one call
# also prints the ratio of the two rates (issue 3's target is 50 %).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

N="${N:-100000}"
C="${C:-8}"
M="${M:-5000}"
SIZES="${SIZES:-10000 50000 100000}"
BACKEND="${BACKEND:-postgres}"
PG="${PG:-postgres://postgres@127.0.0.1:5432}"
BATCH="${BATCH:-}"
CHUNK="${CHUNK:-}"
STEP_TIMEOUT="${STEP_TIMEOUT:-900}"
PERF="${PERF:-0}"
PGSAMPLE="${PGSAMPLE:-0}"
KEEP="${KEEP:-0}"
steps=("$@")
[[ ${#steps[@]} -gt 0 ]] || steps=(skychimpd source django django-orm memory)

bin="${BIN:-$repo/target/release/skychimpd}"
venv="$repo/target/bench-venv"
die() { echo "send.sh: $*" >&2; exit 2; }
[[ -x "$bin" ]] || die "$bin missing: cargo build --release -p skychimpd"
[[ "$BACKEND" == postgres || "$BACKEND" == sqlite ]] || die "BACKEND is postgres or sqlite"

# psql against the server's maintenance database, or against DB when given.
pg_host="$(sed -E 's#^postgres(ql)?://([^@/]*@)?([^:/]+).*#\3#' <<<"$PG")"
pg_port="$(sed -nE 's#^.*:([0-9]+)/?$#\1#p' <<<"$PG")"
pg_user="$(sed -nE 's#^postgres(ql)?://([^@:/]+)[^@]*@.*#\2#p' <<<"$PG")"
q() { # q DB SQL → one unaligned value (notices off)
    PGOPTIONS="-c client_min_messages=warning" psql -X -q -t -A -v ON_ERROR_STOP=1 -h "$pg_host" -p "${pg_port:-5432}" \
        -U "${pg_user:-postgres}" -d "$1" -c "$2"
}

work="$(mktemp -d "${TMPDIR:-/tmp}/skychimp-bench.XXXXXX")"
sink_pid=""
main_rate=""
child=""
dbs=()
cleanup() {
    local rc=$?
    if [[ -n "$child" ]]; then
        # `timeout` passes the signal on to its whole process group (skychimpd, perf, time).
        kill "$child" 2>/dev/null || true
        wait "$child" 2>/dev/null || true
    fi
    if [[ -n "$sink_pid" ]]; then
        kill "$sink_pid" 2>/dev/null || true
        wait "$sink_pid" 2>/dev/null || true
    fi
    if [[ "$KEEP" != 1 ]]; then
        for db in "${dbs[@]}"; do
            q postgres "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 || true
        done
        rm -rf "$work"
    else
        echo "kept: $work ${dbs[*]}" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Run a step under `timeout`, in the background: bash runs a trap only after a foreground
# command ends, so waiting on a background child is what lets Ctrl-C stop a long step.
bounded() {
    timeout --kill-after=10 "$STEP_TIMEOUT" "$@" &
    child=$!
    local rc=0
    wait "$child" || rc=$?
    child=""
    return "$rc"
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# --- the sink -------------------------------------------------------------------------
scripts/smtp-sink.sh path >/dev/null || die "no smtp-sink (see scripts/smtp-sink.sh)"
port="$(free_port)"
# shellcheck disable=SC2086 # SINKOPTS is a list of options
scripts/smtp-sink.sh start "$port" -c ${SINKOPTS:-} >"$work/sink.log" 2>&1 &
sink_pid=$!
for _ in $(seq 50); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
    kill -0 "$sink_pid" 2>/dev/null || { cat "$work/sink.log" >&2; die "smtp-sink did not start"; }
    sleep 0.1
done
echo "# $(date -u +%FT%TZ) $(nproc) cores, load:$(uptime | sed 's/.*load average://')"
echo "# smtp-sink ${SINKOPTS:-} pid $sink_pid on 127.0.0.1:$port; N=$N C=$C M=$M backend=$BACKEND batch=${BATCH:-default} chunk=${CHUNK:-default}"

# --- a content repository with one owner, one list of $1 recipients, one mailing -----
gen_repo() { # gen_repo N DIR
    local n="$1" dir="$2"
    mkdir -p "$dir/clients/bench" "$dir/mailings/bench/messages"
    printf '[bench]\nemail = "owner@example.com"\nname = "Bench Owner"\n' >"$dir/users.toml"
    awk -v n="$n" 'BEGIN {
        print "description = \"benchmark recipients\""
        for (i = 0; i < n; i++)
            printf "\n[[client]]\nemail = \"client%07d@example.com\"\nname = \"Client %d\"\n", i, i
    }' >"$dir/clients/bench/all.toml"
    cat >"$dir/mailings/bench/blast.toml" <<'EOF'
title = "Benchmark blast"
lists = ["all"]
start = 2030-01-01T09:00:00
every = "once"
timezone = "UTC"
message = "news"
EOF
    # About 2 KB of Markdown (the body before rendering; the sent message carries it as
    # text and as HTML, so it is larger on the wire).
    {
        printf 'subject = "News for {{ client.name }}"\nbody = """\n'
        printf '# This month at Example\n\nHello {{ client.name }},\n\n'
        for i in 1 2 3 4 5 6; do
            printf '## Section %d\n\nLorem ipsum dolor sit amet, **consectetur** adipiscing elit, sed do eiusmod\n' "$i"
            printf 'tempor incididunt ut labore et dolore magna aliqua. Ut enim ad minim veniam, quis\n'
            printf 'nostrud exercitation ullamco laboris nisi ut aliquip ex ea commodo consequat.\n\n'
            printf -- '- first point with a [link](https://example.com/%d)\n- second point, *emphasised*\n\n' "$i"
        done
        printf 'Thanks for reading, {{ client.name }}.\n\n[Unsubscribe]({{ unsubscribe_url }})\n"""\n'
    } >"$dir/mailings/bench/messages/news.toml"
}

# Wall seconds and peak RSS (KiB) out of a `/usr/bin/time -v` report.
wall_s() { awk -F': ' '/Elapsed \(wall clock\)/ { n = split($2, p, ":"); s = 0
    for (i = 1; i <= n; i++) s = s * 60 + p[i]; print s }' "$1"; }
rss_kib() { awk -F': ' '/Maximum resident set size/ { print $2 }' "$1"; }
cpu_s() { awk -F': ' '/User time|System time/ { s += $2 } END { print s }' "$1"; }
sys_s() { awk -F': ' '/System time/ { print $2 }' "$1"; }
rate() { awk -v n="$1" -v s="$2" 'BEGIN { printf "%.0f", (s > 0 ? n / s : 0) }'; }

# Run `skychimpd send bench/blast` for N recipients; print one line; check completeness.
skychimpd_run() { # skychimpd_run N LABEL
    local n="$1" label="$2" dir="$work/repo-$1-$2" db url
    gen_repo "$n" "$dir"
    if [[ "$BACKEND" == postgres ]]; then
        db="skychimp_bench_$$_${label//-/_}_$n"
        q postgres "DROP DATABASE IF EXISTS $db" >/dev/null
        q postgres "CREATE DATABASE $db" >/dev/null
        dbs+=("$db")
        url="$PG/$db${PGURLOPTS:-}"
    else
        url="sqlite://$dir/var/bench.db"
    fi
    local -a env=(
        SKYCHIMP_DATABASE_URL="$url"
        SKYCHIMP_SMTP_URL="smtp://127.0.0.1:$port?tls=none"
        SKYCHIMP_SMTP_RATE=0
        SKYCHIMP_SMTP_CONCURRENCY="$C"
        SKYCHIMP_USERS_REQUIRE_VERIFICATION=false
        SKYCHIMP_TOKEN_SECRET=bench-secret-bench-secret-bench-secret
    )
    [[ -n "$BATCH" ]] && env+=(SKYCHIMP_DELIVERY_BATCH="$BATCH")
    [[ -n "$CHUNK" ]] && env+=(SKYCHIMP_DELIVERY_CHUNK="$CHUNK")
    # Migrations first, so the timed command is the send alone.
    env "${env[@]}" "$bin" --root "$dir" migrate >/dev/null
    local -a cmd=("$bin" --root "$dir" send bench/blast)
    if [[ "$PERF" == 1 ]]; then
        mkdir -p target/bench
        cmd=(perf record ${PERFOPTS:--g} -o "$repo/target/bench/perf-$label-$n.data" -- "${cmd[@]}")
    fi
    local status=0 sampler=""
    if [[ "$PGSAMPLE" == 1 && "$BACKEND" == postgres ]]; then
        # One psql session polling with \watch, so the sampler costs one backend, not a
        # process per sample. Each line: wait event and the statement's first words.
        printf '%s\n' "SELECT coalesce(wait_event_type || ':' || wait_event, 'CPU') || ' | ' || \
            left(regexp_replace(query, '\s+', ' ', 'g'), 70) FROM pg_stat_activity \
            WHERE datname = '$db' AND state = 'active' AND pid <> pg_backend_pid() \watch 0.1" |
            PGOPTIONS="-c client_min_messages=warning" psql -X -q -t -A -h "$pg_host" \
                -p "${pg_port:-5432}" -U "${pg_user:-postgres}" -d "$db" \
                >"$work/pgsample-$label-$n" 2>/dev/null &
        sampler=$!
    fi
    bench/cpu.py snap "$work/cpu-before"
    bounded env "${env[@]}" /usr/bin/time -v -o "$work/time-$label-$n" "${cmd[@]}" \
        >"$work/out-$label-$n" 2>"$work/err-$label-$n" || status=$?
    bench/cpu.py snap "$work/cpu-after"
    if [[ -n "$sampler" ]]; then
        kill "$sampler" 2>/dev/null || true
        wait "$sampler" 2>/dev/null || true
        echo "pg_stat_activity samples (active backends, every 0.1 s; N=$n):"
        local total
        total="$(grep -c . "$work/pgsample-$label-$n" || true)"
        grep . "$work/pgsample-$label-$n" | sort | uniq -c | sort -rn | head -n 12 |
            awk -v t="$total" '{ printf "  %5.1f%%  %s\n", 100 * $1 / t, substr($0, index($0, $2)) }'
    fi
    if [[ $status -ne 0 ]]; then
        echo "skychimpd send exited $status" >&2
        tail -n 20 "$work/err-$label-$n" "$work/out-$label-$n" >&2
        return 1
    fi
    local wall rss cpu sys sent attempts span
    wall="$(wall_s "$work/time-$label-$n")"
    cpu="$(cpu_s "$work/time-$label-$n")"
    sys="$(sys_s "$work/time-$label-$n")"
    rss="$(rss_kib "$work/time-$label-$n")"
    if [[ "$BACKEND" == postgres ]]; then
        sent="$(q "$db" "SELECT count(*) FROM deliveries WHERE status = 'sent'")"
        attempts="$(q "$db" "SELECT count(*) FROM attempts")"
        span="$(q "$db" "SELECT extract(epoch FROM max(at) - min(at)) FROM attempts")"
    else
        local f="$dir/var/bench.db"
        sent="$(sqlite3 "$f" "SELECT count(*) FROM deliveries WHERE status = 'sent'")"
        attempts="$(sqlite3 "$f" "SELECT count(*) FROM attempts")"
        span="$(sqlite3 "$f" "SELECT (max(at) - min(at)) / 1000.0 FROM attempts")" # unix ms
    fi
    printf 'skychimpd send %-8s N=%-7s C=%s: %6.2f s wall = %6s messages/s (first→last attempt %6.2f s = %6s/s), peak RSS %6.1f MiB, CPU %6.2f s (%.2f s system); %s sent, %s attempt rows; CPU %s\n' \
        "$BACKEND" "$n" "$C" "$wall" "$(rate "$n" "$wall")" "$span" "$(rate "$n" "$span")" \
        "$(awk -v k="$rss" 'BEGIN { print k / 1024 }')" "$cpu" "$sys" "$sent" "$attempts" \
        "$(bench/cpu.py diff "$work/cpu-before" "$work/cpu-after")"
    [[ "$label" != main ]] || main_rate="$(rate "$n" "$wall")"
    if [[ "$sent" != "$n" || "$attempts" != "$n" ]]; then
        echo "INCOMPLETE: expected $n sent deliveries and $n attempt rows" >&2
        return 1
    fi
    [[ "$KEEP" == 1 ]] || rm -rf "$dir"
}

ensure_django() {
    if ! "$venv/bin/python" -c 'import django, psycopg' 2>/dev/null; then
        python3 -m venv "$venv"
        "$venv/bin/pip" install -q django 'psycopg[binary]'
    fi
}

for step in "${steps[@]}"; do
    case "$step" in
        skychimpd)
            skychimpd_run "$N" main
            ;;
        source)
            # -d: reuse each of the C sessions for many messages, as skychimpd does.
            bench/cpu.py snap "$work/cpu-before"
            start=$(date +%s.%N)
            bounded /usr/bin/time -f '%U %S' -o "$work/time-source" scripts/smtp-sink.sh \
                source -d -s "$C" -m "$N" -l 2000 -f news@example.com -t client@example.com \
                "127.0.0.1:$port"
            end=$(date +%s.%N)
            bench/cpu.py snap "$work/cpu-after"
            secs="$(awk -v a="$start" -v b="$end" 'BEGIN { print b - a }')"
            printf 'smtp-source -d -s %s -m %s -l 2000: %6.2f s = %6s messages/s; CPU smtp-source=%s %s\n' \
                "$C" "$N" "$secs" "$(rate "$N" "$secs")" \
                "$(awk '{ printf "%.2f", $1 + $2 }' "$work/time-source")" \
                "$(bench/cpu.py diff "$work/cpu-before" "$work/cpu-after" | sed 's/postgres=[^ ]* //')"
            # Issue 3's target: at least half of smtp-source's rate.
            [[ -z "$main_rate" ]] || awk -v a="$main_rate" -v b="$(rate "$N" "$secs")" \
                'BEGIN { printf "skychimpd / smtp-source: %.0f %%\n", 100 * a / b }'
            ;;
        django)
            ensure_django
            bounded "$venv/bin/python" bench/django_send.py --port "$port" --count "$M"
            ;;
        django-orm)
            ensure_django
            db="skychimp_bench_$$_django"
            q postgres "CREATE DATABASE $db" >/dev/null
            dbs+=("$db")
            bounded "$venv/bin/python" bench/django_send.py --port "$port" --count "$M" \
                --database-url "$PG/$db"
            ;;
        memory)
            for n in $SIZES; do
                skychimpd_run "$n" mem
                # The same repository read and checked, nothing sent: the floor that loading
                # the catalog (the recipient snapshot) sets by itself.
                dir="$work/repo-check-$n"
                gen_repo "$n" "$dir"
                /usr/bin/time -v -o "$work/time-check-$n" "$bin" --root "$dir" check >/dev/null 2>&1
                printf 'skychimpd check N=%-7s: %6.2f s wall, peak RSS %6.1f MiB\n' "$n" \
                    "$(wall_s "$work/time-check-$n")" \
                    "$(awk -v k="$(rss_kib "$work/time-check-$n")" 'BEGIN { print k / 1024 }')"
                rm -rf "$dir"
            done
            ;;
        *)
            die "unknown step '$step' (skychimpd source django django-orm memory)"
            ;;
    esac
done
echo "# smtp-sink: $(tr '\r' '\n' <"$work/sink.log" | grep -v '^$' | tail -n 1)"
