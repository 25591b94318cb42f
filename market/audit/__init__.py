"""Independent audit: checks a job's settlement and the contracts' balances from the chain (and the published
report) alone, trusting no market database."""
