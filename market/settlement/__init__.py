"""Settlement (pure): who is paid what for a job's verified work, and the Merkle-rooted report auditors check."""
