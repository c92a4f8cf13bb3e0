-- Schema variant for attemptspk (claim-then-mark.sql's statements): the attempt log's
-- primary key is (mailing_id, id), the index the log's pages read, instead of `id` alone
-- beside a second index on (mailing_id, id): one index entry fewer per attempt.
ALTER TABLE attempts DROP CONSTRAINT attempts_pkey;
DROP INDEX attempts_mailing;
ALTER TABLE attempts ADD PRIMARY KEY (mailing_id, id);
