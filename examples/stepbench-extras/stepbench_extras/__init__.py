"""Example stepbench plugin package: one plugin of every kind, outside stepbench's own code."""
