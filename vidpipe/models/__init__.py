"""Model adapters: single-device code (never imports torch.distributed); only a family's `parallelize.py` and
`cost.py` (`svd/`) use `vidpipe.parallel`."""
