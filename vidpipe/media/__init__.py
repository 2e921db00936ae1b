"""Media in and out: the input image, the output folder and names, and atomic writers for every format."""

from vidpipe.media.atomic import remove_temporaries
from vidpipe.media.images import load_image, test_card
from vidpipe.media.outputs import (
    FORMATS,
    check_output_dir,
    existing_outputs,
    is_complete,
    output_paths,
    parse_formats,
    sample_stem,
)
from vidpipe.media.video import check_ffmpeg_h264, write_mp4
from vidpipe.media.writers import (
    append_manifest,
    png_frame_name,
    write_gif,
    write_json,
    write_latents,
    write_png,
    write_png_frames,
)

__all__ = [
    "append_manifest",
    "remove_temporaries",
    "FORMATS",
    "check_ffmpeg_h264",
    "check_output_dir",
    "existing_outputs",
    "is_complete",
    "load_image",
    "test_card",
    "output_paths",
    "parse_formats",
    "png_frame_name",
    "sample_stem",
    "write_gif",
    "write_json",
    "write_latents",
    "write_mp4",
    "write_png",
    "write_png_frames",
]
