"""Hook specifications: every hook the gateway calls, with its call mode. Docstrings only."""

import pluggy

hookspec = pluggy.HookspecMarker("edgecrab")
hookimpl = pluggy.HookimplMarker("edgecrab")
