"""Code generation from pass plans to Triton (issue 3). Imports only ``dsl`` and ``ir``."""
