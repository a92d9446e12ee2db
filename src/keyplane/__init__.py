"""keyplane: a self-hosted Management API for inference API keys, and the gateways that enforce it.

The control plane (``keyplane.control``) owns the truth about teams, management keys and API keys;
each cluster's gateway (``keyplane.gateway``) holds a replica of what enforcement needs.
"""

__version__ = "0.1.0"
