"""``python -m torch_featureviz.cli``: the ``featureviz`` command."""

import sys

from torch_featureviz.cli.app import main

sys.exit(main())
