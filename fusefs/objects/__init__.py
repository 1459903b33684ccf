"""The object-store seam: the only package that talks to S3 (and the only one importing boto3).

`base` holds the `ObjectStore` interface and the one error classification; `s3` is the boto3
implementation, `memory` an in-process one for fast tests and simulation. It imports only
`fusefs.model` (whose error classes the seam's refine: one classification, see `base`).
The S3 implementation is not imported here, so `import fusefs.objects` stays cheap (no boto3).
"""

from fusefs.objects.base import (
    AccessDenied,
    BadDigest,
    ConfigError,
    InvalidKey,
    ListPage,
    NoCredentials,
    NotFound,
    ObjectInfo,
    ObjectStore,
    ObjectStoreError,
    ObjectVersion,
    PreconditionFailed,
    RequestCounter,
    SlowDown,
    Timeout,
    Unavailable,
    check_key,
)

__all__ = [
    "AccessDenied",
    "BadDigest",
    "ConfigError",
    "InvalidKey",
    "ListPage",
    "NoCredentials",
    "NotFound",
    "ObjectInfo",
    "ObjectStore",
    "ObjectStoreError",
    "ObjectVersion",
    "PreconditionFailed",
    "RequestCounter",
    "SlowDown",
    "Timeout",
    "Unavailable",
    "check_key",
]
