"""One module per layer type; each holds its forward (and later backward/update) side by side."""
