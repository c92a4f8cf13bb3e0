-- claim-then-mark.sql without the attempt log (see run.sh): what inserting one attempt row
-- per delivery costs the database. A diagnostic only: skychimpd logs every attempt.
\if :k = 0
BEGIN;
SET LOCAL enable_sort = off;
WITH c AS (UPDATE deliveries d SET lease_owner = 'w' || :client_id, lease_until = now() + interval '5 min' FROM runs r WHERE r.id = d.run_id AND d.id = ANY(ARRAY( SELECT id FROM deliveries WHERE status IN ('queued', 'deferred') AND next_attempt_at <= now() AND (lease_until IS NULL OR lease_until <= now()) ORDER BY next_attempt_at, id LIMIT 512 FOR UPDATE SKIP LOCKED)) RETURNING d.id, d.run_id, r.mailing_id, d.address, d.email, d.name, d.comment, d.attempts, d.status) SELECT coalesce(array_agg(id ORDER BY id), '{}') AS batch FROM c \gset
COMMIT;
\endif
\set lo :k * :chunk + 1
\set hi :k * :chunk + :chunk
WITH o AS (SELECT id, 'sent'::text status, NULL::timestamptz next_at, 250 code, '2.0.0 Ok: queued as ABCDEF123' reply, now() at, 1::bigint duration_ms FROM unnest(:prev::bigint[]) id),
u AS (UPDATE deliveries d SET status = o.status, attempts = d.attempts + 1, next_attempt_at = coalesce(o.next_at, d.next_attempt_at), last_code = o.code, last_reply = o.reply, lease_owner = NULL, lease_until = NULL, updated_at = o.at FROM o WHERE d.id = o.id RETURNING d.id, d.run_id, d.address),
a AS (SELECT 1 FROM u),
m AS (UPDATE deliveries SET status = 'sending', updated_at = now() WHERE id = ANY((:batch::bigint[])[:lo::int : :hi::int]) AND lease_owner = 'w' || :client_id AND status NOT IN ('sending', 'sent', 'failed', 'skipped', 'unknown') RETURNING id)
SELECT (SELECT count(*) FROM a) AS written, coalesce((SELECT array_agg(id) FROM m), '{}') AS prev \gset
\set k (:k + 1) % (512 / :chunk)
