-- Nothing to undo: unknown_payer was always a valid reason, and the rows wait the same way.
SELECT 1;
