"""Wan 2.1 / 2.2 image-to-video (`WanImageToVideoPipeline`).

Model definitions: `configs/` holds one diffusers-style directory per flavor (configs only, no weights; sources in
its README); `tiny.py` builds random-weight pipelines from them, counts parameters on the meta device and builds
the small local tokenizer that stands in for UMT5's. Kept import-free so that importing the package stays cheap.
"""
