"""The synthetic marketplace: generator, world dynamics, campaign replay."""
