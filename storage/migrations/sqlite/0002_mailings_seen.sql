-- When a daemon first had each mailing in its catalog (unix milliseconds). A mailing that
-- never ran but was seen before its latest occurrence is not new: that occurrence was
-- missed (downtime, an owner not yet verified, a paused mailing), and the due rule sends it
-- only within catch_up. One seen after it (deployed late) sends at once.
CREATE TABLE mailings_seen (
    mailing_id TEXT    PRIMARY KEY,
    first_seen INTEGER NOT NULL
);
