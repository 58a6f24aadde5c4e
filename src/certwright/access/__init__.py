"""Service-side access policy: default deny, rules over identities and roles (DESIGN.md).

See :mod:`certwright.access.policy`.
"""

from certwright.access.policy import Decision, Policy, PolicyError, Request, Subject

__all__ = ["Decision", "Policy", "PolicyError", "Request", "Subject"]
