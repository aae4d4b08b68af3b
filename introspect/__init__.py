"""introspect: look inside a live Python process without restarting it."""

__version__ = "0.1.0"
