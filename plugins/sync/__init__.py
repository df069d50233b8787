"""Built-in weight-sync methods (``+sync=...``): the RL step's hand-off of new weights to inference."""
