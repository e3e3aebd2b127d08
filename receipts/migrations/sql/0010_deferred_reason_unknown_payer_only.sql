-- Deferrals kept as unknown_end_user before payer bindings existed wait for a payer like any other:
-- they become unknown_payer (a new binding replays them the same way), so that reason can go.
UPDATE receipts_deferredusage SET reason = 'unknown_payer' WHERE reason = 'unknown_end_user';
