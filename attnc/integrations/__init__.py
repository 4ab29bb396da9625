"""attnc inside other libraries: ``attnc.integrations.transformers`` (the `transformers` extra)."""
