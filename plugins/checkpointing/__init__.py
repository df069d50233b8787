"""Built-in checkpointing plugins."""
