"""Scoring: per-unit importance of every prunable group (data-free magnitude and similarity; calibrated Taylor/Fisher through gates in a torch execution)."""
