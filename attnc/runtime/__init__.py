"""Runtime: the spec front door, the reference interpreter (the oracle) and the CLI."""
