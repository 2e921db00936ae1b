"""The parallel plan (named DeviceMesh axes) and the model-level axes applied to the UNet from outside:
`cfg` (the guidance batch), `sp` (the frames; the layers it patches are in `models/svd/parallelize.py`), `fsdp`
(the parameters). Model adapters never import this package."""
