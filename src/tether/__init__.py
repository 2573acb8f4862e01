"""tether: run a local process in the context of a remote Kubernetes pod."""

__version__ = "0.1.0"
