-- Schema variant for hot.sql: `status` in no index, so marking `sending` can be a HOT update.
-- The due index is keyed on `due_at` (the next attempt while a row waits or is in flight,
-- NULL once it is final) instead of being partial on `status`; `deliveries_sending` goes
-- (recovery would find `sending` rows through the due index).
ALTER TABLE deliveries ADD COLUMN due_at TIMESTAMPTZ DEFAULT now();
DROP INDEX deliveries_due;
DROP INDEX deliveries_sending;
CREATE INDEX deliveries_due ON deliveries (due_at, id) WHERE due_at IS NOT NULL;
