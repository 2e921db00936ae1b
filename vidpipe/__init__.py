"""vidpipe: Stable Video Diffusion inference spread over several GPUs."""

import os

# transformers warns on every CLIP image processor built without torchvision (the PIL fallback it takes is
# what the pipeline uses anyway); one line per rank per run is noise, not news. The user's own setting wins.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

__version__ = "0.1.0"
