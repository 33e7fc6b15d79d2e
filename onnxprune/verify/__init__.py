"""Verification: compare a pruned model with its original (outputs, perplexity, speed)."""
