"""AIO Federation agent: one LiveKit voice worker per department.

Importing this package must stay cheap (no livekit, no pydantic): healthcheck.py and the
entrypoint check for it with importlib.util.find_spec on every probe.
"""

__version__ = "0.1.0"
