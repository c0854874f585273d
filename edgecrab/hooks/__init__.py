"""Hook scripting on pluggy, in the order a hook file meets it.

:mod:`~edgecrab.hooks.specs` declares every hook (docstrings only) and ``hookimpl``;
:mod:`~edgecrab.hooks.load` imports hook files, modules and entry points and checks them against the specs;
:mod:`~edgecrab.hooks.manager` is the one :class:`~edgecrab.hooks.manager.HookManager` per gateway (built-in
features register like user plugins); :mod:`~edgecrab.hooks.call` calls implementations, sync or async,
each isolated (errors logged and skipped, timeouts abandoned).
"""
