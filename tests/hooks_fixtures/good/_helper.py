"""Files starting with an underscore are never loaded; importing this would fail loudly."""

raise RuntimeError("_helper.py must not be loaded")
