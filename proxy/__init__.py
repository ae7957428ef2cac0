"""A gateway for private files in S3: authorize each request, then stream or redirect."""

__version__ = "0.1.0"
