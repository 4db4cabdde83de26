"""Signal propagation statistics and plots."""
