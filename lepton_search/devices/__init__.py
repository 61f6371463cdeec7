"""What runs where: the identity of the machine a measurement runs on (``_machine``) and the
traits of the deployment backends (``_backends``).

Both ``spaces`` (which decides what a search space offers on this CPU, and which precisions a
backend runs) and ``objectives`` (which measures) read these facts, so they live below both rooms
and import neither.
"""
