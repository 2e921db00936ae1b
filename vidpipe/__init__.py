"""vidpipe: Stable Video Diffusion inference spread over several GPUs."""

__version__ = "0.1.0"
