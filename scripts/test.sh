#!/usr/bin/env bash
# The whole test suite: `scripts/test.sh` (extra arguments go to `cargo test`).
#
# Sets up what the integration tests use and cargo cannot fetch: Postfix's smtp-sink (taken
# from Debian's postfix package without installing the MTA) and, where apt is usable,
# Debian's chromium for the site's browser check. PostgreSQL and Redis are used when they
# answer on 127.0.0.1; tests that need a missing service say "skipped: …" and pass, unless
# SKYCHIMP_REQUIRE_POSTGRES / _REDIS / _SMTP_SINK / _CHROMIUM=1 make them mandatory (CI).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -x scripts/smtp-sink.sh ]; then
  if sink=$(scripts/smtp-sink.sh path 2>/dev/null); then
    echo "smtp-sink: $sink"
  else
    echo "smtp-sink: unavailable (tests that need it will say skipped)"
  fi
fi

if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get install -y -qq chromium >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1; }) \
    || echo "chromium: could not be installed (the browser check will say skipped)"
fi

exec cargo test --workspace "$@"
