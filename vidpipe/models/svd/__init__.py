"""Stable Video Diffusion (`StableVideoDiffusionPipeline`): everything vidpipe knows of this family.

`adapter.py` (`SVDModel`, `SVDParams`, sizes, loading or building the components), `sampling.py` (the denoising
loop), `parallelize.py` (which of the UNet's layers `sp` splits), `cost.py` (bytes per step from the UNet config),
`architecture.py` (where the UNet mixes frames), `simulator.py` and `simulator_temporal.py` (the simulator's
stand-in UNet), `tiny.py` (the tiny random model) and `configs/` (architecture configs, no weights). Kept
import-free so that importing the package stays cheap (no diffusers).
"""
