"""Built-in stepbench plugins: attention backends, activation-memory strategies, adapters."""
