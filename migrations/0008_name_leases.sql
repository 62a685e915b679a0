-- Leases on the entries of mirrors named by secret name (spec section 16). With
-- naming = "name" an entry is written in turn by different secrets (a rename frees a
-- name, another secret takes it), and deliveries are leased per secret: two serve
-- processes could write one name at once, and on a store without conditional writes
-- (AWS) a late tombstone could land after the put of the secret that took the name.
-- A delivery holds the names it writes here, under its own lease token, for as long as
-- its delivery lease; another delivery finding a name held retries later (contended).
-- target is the store's location, as in deliveries.
CREATE TABLE IF NOT EXISTS name_leases (
    target text NOT NULL,
    name text NOT NULL,
    holder text NOT NULL,
    leased_until timestamptz NOT NULL,
    PRIMARY KEY (target, name)
);
