-- Reconcile jobs per store (spec section 16): a verify or repair job covers the stores it
-- was started for ("stores": [...] of POST /admin/v1/reconcile, CLI --store), by name
-- (primary, backup, a mirror's name). NULL: every store configured when the job runs
-- (the scheduled verify, and backup, restore and rekey jobs, which name their stores).
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS stores text[];
