"""Example stepbench plugin package: FlexAttention with a document mask."""
