-- Status and the metrics count pending and dead deliveries per target at every
-- scrape. These partial indexes keep that work proportional to what is pending
-- or dead rather than to the number of secrets (2 M delivery rows: ~1 s -> ~1 ms).
CREATE INDEX deliveries_pending ON deliveries (target, pending_since)
    WHERE version > applied_version AND NOT dead;
CREATE INDEX deliveries_dead ON deliveries (target) WHERE dead;
