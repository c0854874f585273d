"""``python -m edgecrab.testing.fake_openai`` (see :mod:`edgecrab.testing.fake_openai.cli`)."""

import sys

from edgecrab.testing.fake_openai.cli import main

sys.exit(main())
