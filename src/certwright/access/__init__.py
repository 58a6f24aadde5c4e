"""Service-side access policy: default deny, rules over identities and roles (DESIGN.md).

See :mod:`certwright.access.policy` and docs/access.md.
"""

from certwright.access.model import Decision, PolicyError, Request, Subject
from certwright.access.policy import Policy
from certwright.access.rules import Effect, Rule

__all__ = ["Decision", "Effect", "Policy", "PolicyError", "Request", "Rule", "Subject"]
