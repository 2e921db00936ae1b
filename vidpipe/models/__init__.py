"""Model adapters: single-device code (never imports torch.distributed)."""
