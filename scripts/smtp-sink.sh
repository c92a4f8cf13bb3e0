#!/usr/bin/env bash
# Postfix's smtp-sink / smtp-source test tools, without installing the MTA.
#
# Why: the transport's integration tests and benchmark need a real SMTP server that can be
# told to answer 4xx/5xx, drop connections and dump what it received. Postfix ships exactly
# that as smtp-sink, but installing the postfix package would start (and configure) an MTA.
# So we fetch the .deb with `apt-get download` and unpack it with `dpkg -x` into a cache
# folder; nothing is installed system-wide and a second call does nothing.
#
# Usage:
#   scripts/smtp-sink.sh path                 fetch if needed; print the folder holding
#                                             smtp-sink and smtp-source (exit 1 if unavailable)
#   scripts/smtp-sink.sh libdir               print the LD_LIBRARY_PATH the tools need
#   scripts/smtp-sink.sh start PORT [FLAGS…]  run smtp-sink in the foreground on 127.0.0.1:PORT
#                                             (adds `-u nobody` when run as root); e.g.
#                                             scripts/smtp-sink.sh start 2525 -c -D /tmp/dump
#   scripts/smtp-sink.sh source [ARGS…]       run smtp-source with ARGS, e.g.
#                                             scripts/smtp-sink.sh source -d -s 8 -m 10000 -l 2000 127.0.0.1:2525
#
# Environment:
#   SKYCHIMP_POSTFIX_DIR  cache folder for the unpacked package
#                         (default: <repo>/target/postfix)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
cache="${SKYCHIMP_POSTFIX_DIR:-$repo/target/postfix}"
bindir="$cache/usr/sbin"
libdir="$cache/usr/lib/postfix"

die() { echo "smtp-sink.sh: $*" >&2; exit 1; }

# Download and unpack postfix into $cache unless it is already there.
ensure() {
    if [[ -x "$bindir/smtp-sink" && -x "$bindir/smtp-source" ]]; then
        return 0
    fi
    command -v apt-get >/dev/null || die "apt-get not found; cannot fetch postfix's smtp-sink"
    command -v dpkg >/dev/null || die "dpkg not found; cannot unpack postfix"
    local tmp
    tmp="$(mktemp -d)"
    chmod 0755 "$tmp" # apt's _apt user must be able to write here to avoid a warning
    # shellcheck disable=SC2064
    trap "rm -rf '$tmp'" RETURN
    if ! (cd "$tmp" && apt-get download postfix >/dev/null 2>&1); then
        echo "smtp-sink.sh: apt-get download failed; running apt-get update and retrying" >&2
        apt-get update >/dev/null 2>&1 || true
        (cd "$tmp" && apt-get download postfix >/dev/null 2>&1) \
            || die "apt-get download postfix failed"
    fi
    local deb
    deb="$(ls "$tmp"/postfix_*.deb 2>/dev/null | head -n1)"
    [[ -n "$deb" ]] || die "apt-get download left no postfix_*.deb"
    # Unpack next to the cache and rename, so a concurrent or interrupted call never
    # leaves a half-unpacked tree behind the "already there" check above.
    mkdir -p "$(dirname "$cache")"
    local stage="$cache.tmp.$$"
    rm -rf "$stage"
    dpkg -x "$deb" "$stage" || die "dpkg -x $deb failed"
    if [[ -x "$bindir/smtp-sink" ]]; then
        rm -rf "$stage" # someone else finished first
    else
        rm -rf "$cache"
        mv "$stage" "$cache"
    fi
    [[ -x "$bindir/smtp-sink" ]] || die "no smtp-sink in the postfix package"
}

cmd="${1:-path}"
shift || true
case "$cmd" in
    path)
        ensure
        echo "$bindir"
        ;;
    libdir)
        ensure
        echo "$libdir"
        ;;
    start)
        [[ $# -ge 1 ]] || die "usage: smtp-sink.sh start PORT [smtp-sink flags…]"
        port="$1"
        shift
        ensure
        user_flag=()
        # As root smtp-sink refuses to run without dropping privileges.
        if [[ "$(id -u)" == 0 ]]; then user_flag=(-u nobody); fi
        LD_LIBRARY_PATH="$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
            exec "$bindir/smtp-sink" "${user_flag[@]}" "$@" "127.0.0.1:$port" 1024
        ;;
    source)
        ensure
        LD_LIBRARY_PATH="$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
            exec "$bindir/smtp-source" "$@"
        ;;
    *)
        die "unknown command '$cmd' (path | libdir | start PORT [flags] | source [args])"
        ;;
esac
