"""Exceptions shared by the layers, in a module that imports nothing heavy (no boto3)."""


class S3ConfigError(Exception):
    """Settings that will not work until the user changes them (bucket, credentials)."""


class S3NoCredentials(S3ConfigError):
    """No AWS credentials at all: a mount works offline (warned), a sync is refused."""


class S3Unavailable(Exception):
    """The endpoint cannot be reached or answers with a temporary error: retry later.

    `sent` is False only when the request surely never reached the server (no connection
    could be made); otherwise it may have been applied with its answer lost."""

    sent = True


class S3Timeout(S3Unavailable):
    """The endpoint took the connection but did not answer in time: S3 is "degraded"."""


MAX_BACKOFF = 15.0  # seconds: the longest wait before an S3 call that failed is tried again


class Precondition(Exception):
    """412: the object exists (If-None-Match) or changed (If-Match)."""


class ClaimUnavailable(Exception):
    """Strict claims need S3 and it cannot be reached: the claim is refused, try again later."""
