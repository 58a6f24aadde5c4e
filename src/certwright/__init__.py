"""certwright: an internal certificate authority and toolkit for service mTLS."""

__version__ = "0.1.0"
