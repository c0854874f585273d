"""The gateway's own HTTP port and the operator's tools.

* :mod:`~edgecrab.ops.server`: the listener (``/healthz``, ``/readyz``, ``/metrics``, ``/status``), run by
  the gateway in its task group;
* :mod:`~edgecrab.ops.ready`: the readiness checks; :mod:`~edgecrab.ops.metrics`: the Prometheus registry;
* :mod:`~edgecrab.ops.parts`: what of a running gateway they look at;
* :mod:`~edgecrab.ops.doctor`: ``edgecrab doctor``, the checklist to run before going live.
"""
