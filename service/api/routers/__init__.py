"""Path operations, one module per concern: health probes, model information, and the face endpoints."""
