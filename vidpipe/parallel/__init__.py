"""The parallel plan (named DeviceMesh axes) and the model-level axes applied to the UNet from outside:
`cfg` (the guidance batch), `sp` (the frames), `fsdp` (the parameters). Models never import this package."""
