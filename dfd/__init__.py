"""Pure logic of the deepfake batch-detection product (no Prefect here)."""
