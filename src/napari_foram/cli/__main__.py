"""``python -m napari_foram.cli``: the same as the ``napari-foram`` command."""

import sys

from napari_foram.cli import main

sys.exit(main())
