"""Human-readable reports: rich tables and plots."""
