"""``certwright serve``: the CA as an HTTP service (issue 5). See ``docs/server.md``."""
