-- Every discrepancy of a run, one row each; the report counts them all and lists the first few per kind.
CREATE TEMP TABLE reconcile_found (
    kind text NOT NULL,
    ref text NOT NULL,
    at timestamptz,
    healable boolean NOT NULL DEFAULT false,
    healed boolean NOT NULL DEFAULT false,
    detail jsonb NOT NULL
)
