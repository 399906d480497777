"""Win-back experiments: arm assignment, statistics, the campaign readout."""
