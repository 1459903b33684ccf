"""One classification of S3 failures: the seam's errors (fusefs.objects.base) are the model's
(fusefs.model.errors) refined, so every layer catches what `s3.classify` raises."""

from __future__ import annotations

import botocore.exceptions
import pytest

from fusefs.model.errors import (
    Precondition,
    S3ConfigError,
    S3NoCredentials,
    S3Timeout,
    S3Unavailable,
)
from fusefs.objects.base import (
    AccessDenied,
    BadDigest,
    NoCredentials,
    NotFound,
    PreconditionFailed,
    SlowDown,
    Timeout,
    Unavailable,
)
from fusefs.objects.s3 import classify


def client_error(status: int, code: str) -> botocore.exceptions.ClientError:
    response = {
        "Error": {"Code": code, "Message": "m"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return botocore.exceptions.ClientError(response, "PutObject")


@pytest.mark.parametrize(
    ("status", "code", "seam", "model"),
    [
        (412, "PreconditionFailed", PreconditionFailed, Precondition),
        (409, "ConditionalRequestConflict", PreconditionFailed, Precondition),
        (404, "NoSuchKey", NotFound, S3ConfigError),
        (403, "AccessDenied", AccessDenied, S3ConfigError),
        (503, "SlowDown", SlowDown, S3Unavailable),
        (500, "InternalError", Unavailable, S3Unavailable),
        (400, "BadDigest", BadDigest, S3ConfigError),
        (501, "NotImplemented", S3ConfigError, S3ConfigError),
    ],
)
def test_http_answers_are_classified_once_for_every_layer(
    status: int, code: str, seam: type, model: type
) -> None:
    e = classify(client_error(status, code), "PUT k")
    assert isinstance(e, seam) and isinstance(e, model), type(e)
    assert str(e).startswith("PUT k: ") and "\n" not in str(e)


def test_network_failures_say_whether_the_request_may_have_been_applied() -> None:
    refused = classify(botocore.exceptions.EndpointConnectionError(endpoint_url="http://x"), "PUT")
    assert isinstance(refused, S3Unavailable) and not isinstance(refused, S3Timeout)
    assert refused.sent is False  # no connection: surely not applied
    connect = classify(botocore.exceptions.ConnectTimeoutError(endpoint_url="http://x"), "PUT")
    assert isinstance(connect, Timeout) and isinstance(connect, S3Timeout) and not connect.sent
    read = classify(botocore.exceptions.ReadTimeoutError(endpoint_url="http://x"), "PUT")
    assert isinstance(read, S3Timeout) and read.sent  # it may have been applied, answer lost


def test_missing_credentials_are_the_models_no_credentials() -> None:
    e = classify(botocore.exceptions.NoCredentialsError(), "HEAD s3://b")
    assert isinstance(e, NoCredentials) and isinstance(e, S3NoCredentials)
    assert "no AWS credentials" in str(e)
