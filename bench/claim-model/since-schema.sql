-- Schema variant for since.sql: `sending` as a timestamp column that no index reads, so
-- marking a row `sending` can be a HOT update; `deliveries_sending` goes (recovery would find
-- marked rows through the due index).
ALTER TABLE deliveries ADD COLUMN sending_since TIMESTAMPTZ;
DROP INDEX deliveries_sending;
