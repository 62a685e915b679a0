-- Pending and dead deliveries are found per target: the worker claims due rows of
-- the configured targets, and status and the metrics count pending and dead rows per
-- target at every scrape. Keyed by target, neither walks past the rows of another
-- target (a store removed from the configuration leaves its rows behind) nor reads the
-- rows that are done (2 M rows: status ~1 s -> ~1 ms; a claim behind 50,000 rows of a
-- removed store: 13 ms -> 0.1 ms).
DROP INDEX deliveries_due;
CREATE INDEX deliveries_due ON deliveries (target, next_attempt_at) INCLUDE (pending_since)
    WHERE version > applied_version AND NOT dead;
CREATE INDEX deliveries_dead ON deliveries (target) WHERE dead;
