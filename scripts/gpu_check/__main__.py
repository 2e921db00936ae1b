"""`python scripts/gpu_check SUBCOMMAND ...` (what scripts/gpu-check.sh and the steps run), or `python -m gpu_check`
with scripts/ on the path."""

import sys
from pathlib import Path

if not __package__:  # run as a folder: Python put the package itself on the path, not the folder that holds it
    here = Path(__file__).resolve().parent
    sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != here]
    sys.path.insert(0, str(here.parent))

from gpu_check.cli import main  # noqa: E402 - after the path above

sys.exit(main())
