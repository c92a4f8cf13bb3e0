-- claim-then-mark.sql on queue-schema.sql (see run.sh): claims lease rows of `due`, the mark
-- and the outcome are HOT updates of deliveries, an outcome deletes the row from `due`.
\if :k = 0
BEGIN;
SET LOCAL enable_sort = off;
WITH c AS (UPDATE due q SET lease_owner = 'w' || :client_id, lease_until = now() + interval '5 min' WHERE q.id = ANY(ARRAY( SELECT id FROM due WHERE at <= now() AND (lease_until IS NULL OR lease_until <= now()) ORDER BY at, id LIMIT 512 FOR UPDATE SKIP LOCKED)) RETURNING q.id), d AS (SELECT d.id, d.run_id, r.mailing_id, d.address, d.email, d.name, d.comment, d.attempts, d.status FROM deliveries d JOIN runs r ON r.id = d.run_id WHERE d.id IN (SELECT id FROM c)) SELECT coalesce(array_agg(id ORDER BY id), '{}') AS batch FROM d \gset
COMMIT;
\endif
\set lo :k * :chunk + 1
\set hi :k * :chunk + :chunk
WITH o AS (SELECT id, 'sent'::text status, NULL::timestamptz next_at, 250 code, '2.0.0 Ok: queued as ABCDEF123' reply, now() at, 1::bigint duration_ms FROM unnest(:prev::bigint[]) id),
u AS (UPDATE deliveries d SET status = o.status, attempts = d.attempts + 1, next_attempt_at = coalesce(o.next_at, d.next_attempt_at), last_code = o.code, last_reply = o.reply, updated_at = o.at FROM o WHERE d.id = o.id RETURNING d.id, d.run_id, d.address),
a AS (INSERT INTO attempts (delivery_id, run_id, mailing_id, address, at, outcome, smtp_code, reply, duration_ms) SELECT o.id, u.run_id, r.mailing_id, u.address, o.at, o.status, o.code, o.reply, o.duration_ms FROM o JOIN u ON u.id = o.id JOIN runs r ON r.id = u.run_id RETURNING 1),
x AS (DELETE FROM due WHERE id IN (SELECT id FROM o WHERE o.status <> 'deferred')),
m AS (UPDATE deliveries SET status = 'sending', updated_at = now() WHERE id IN (SELECT id FROM due WHERE id = ANY((:batch::bigint[])[:lo::int : :hi::int]) AND lease_owner = 'w' || :client_id) AND status NOT IN ('sending', 'sent', 'failed', 'skipped', 'unknown') RETURNING id)
SELECT (SELECT count(*) FROM a) AS written, coalesce((SELECT array_agg(id) FROM m), '{}') AS prev \gset
\set k (:k + 1) % (512 / :chunk)
