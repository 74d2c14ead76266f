"""Storage credentials: one typed object rendered for deltalake, s3fs, pyarrow and lance."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from matrixos.errors import ConfigError

# The keys deltalake (object_store) takes, mapped to our fields. Lower-case spellings and
# the ``aws_``-less spellings are accepted too.
_KEYS = {
    "AWS_ENDPOINT_URL": "endpoint_url",
    "AWS_ENDPOINT": "endpoint_url",
    "AWS_REGION": "region",
    "AWS_DEFAULT_REGION": "region",
    "AWS_ACCESS_KEY_ID": "access_key_id",
    "AWS_SECRET_ACCESS_KEY": "secret_access_key",
    "AWS_SESSION_TOKEN": "session_token",
    "AWS_ALLOW_HTTP": "allow_http",
}
_TRUE = {"1", "true", "yes", "on"}

# deltalake's and lance's spellings of the client limits, mapped to our fields.
_LIMIT_KEYS = {
    "timeout": "request_timeout",
    "connect_timeout": "connect_timeout",
    "max_retries": "max_retries",
    "client_max_retries": "max_retries",
    "retry_timeout": "retry_timeout",
    "client_retry_timeout": "retry_timeout",
}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*(ms|s|m|h)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}

# Seconds (retries: a count). Settings.storage_* default to these; see matrixos/config.py.
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_REQUEST_TIMEOUT = 30.0
DEFAULT_MAX_RETRIES = 3
DEFAULT_RETRY_TIMEOUT = 60.0


class StorageOptions(BaseModel):
    """S3-compatible credentials and endpoint; secrets never appear in ``repr``.

    Example:
        >>> o = StorageOptions.from_mapping({"AWS_REGION": "eu-west-1"}, env={})
        >>> o.to_delta()["AWS_REGION"], o.to_delta()["timeout"]
        ('eu-west-1', '30000ms')
    """

    model_config = ConfigDict(frozen=True)

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None
    session_token: SecretStr | None = None
    allow_http: bool | None = None
    # How long to wait, and how often to retry, before a request fails with StorageError.
    connect_timeout: float = Field(default=DEFAULT_CONNECT_TIMEOUT, gt=0)
    request_timeout: float = Field(default=DEFAULT_REQUEST_TIMEOUT, gt=0)
    max_retries: int = Field(default=DEFAULT_MAX_RETRIES, ge=0)
    retry_timeout: float = Field(default=DEFAULT_RETRY_TIMEOUT, gt=0)

    @classmethod
    def from_mapping(
        cls,
        options: Mapping[str, Any] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        **limits: Any,
    ) -> StorageOptions:
        """Options from deltalake-style keys; missing ones fall back to ``AWS_*`` variables.

        ``limits``: ``connect_timeout``, ``request_timeout``, ``retry_timeout`` (seconds) and
        ``max_retries`` (see ``Settings.storage_*``).
        """
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for key, name in _KEYS.items():
            if name not in values and env.get(key):
                values[name] = env[key]
        for key, value in (options or {}).items():
            upper = key.upper()
            limit = _LIMIT_KEYS.get(key.lower())
            if limit is not None:  # what to_delta()/to_lance() render reads back
                limits.setdefault(limit, _seconds(key, value) if limit != "max_retries" else value)
                continue
            field = _KEYS.get(upper) or _KEYS.get("AWS_" + upper)
            if field is None:
                raise ConfigError(
                    f"unknown storage option {key!r}",
                    hint="use one of " + ", ".join(sorted({*_KEYS, *_LIMIT_KEYS})),
                )
            values[field] = value
        if isinstance(values.get("allow_http"), str):
            values["allow_http"] = values["allow_http"].strip().lower() in _TRUE
        if values.get("allow_http") is None and str(values.get("endpoint_url", "")).startswith(
            "http://"
        ):
            values["allow_http"] = True
        return cls(**values, **limits)

    def _secret(self, name: str) -> str | None:
        value = getattr(self, name)
        return value.get_secret_value() if value is not None else None

    def _credentials(self) -> dict[str, str]:
        out = {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_REGION": self.region,
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self._secret("secret_access_key"),
            "AWS_SESSION_TOKEN": self._secret("session_token"),
            "AWS_ALLOW_HTTP": None if self.allow_http is None else str(self.allow_http).lower(),
        }
        return {k: v for k, v in out.items() if v is not None}

    def to_delta(self) -> dict[str, str]:
        """deltalake / object_store keys (conditional PUT is its default on S3), with the
        client's timeouts and retry policy."""
        return {
            **self._credentials(),
            "timeout": _duration(self.request_timeout),
            "connect_timeout": _duration(self.connect_timeout),
            "max_retries": str(self.max_retries),
            "retry_timeout": _duration(self.retry_timeout),
        }

    def to_lance(self) -> dict[str, str]:
        """lance / lancedb keys: the same names in lower case; lance spells the retry policy
        ``client_max_retries`` / ``client_retry_timeout`` (whole seconds)."""
        return {
            **{k.lower(): v for k, v in self._credentials().items()},
            "timeout": _duration(self.request_timeout),
            "connect_timeout": _duration(self.connect_timeout),
            "client_max_retries": str(self.max_retries),
            "client_retry_timeout": str(max(1, math.ceil(self.retry_timeout))),
        }

    def to_s3fs(self) -> dict[str, Any]:
        """Keyword arguments for ``s3fs.S3FileSystem``."""
        client: dict[str, Any] = {}
        if self.endpoint_url:
            client["endpoint_url"] = self.endpoint_url
        if self.region:
            client["region_name"] = self.region
        out: dict[str, Any] = {
            "client_kwargs": client,
            "config_kwargs": {
                "connect_timeout": self.connect_timeout,
                "read_timeout": self.request_timeout,
                "retries": {"max_attempts": self.max_retries + 1, "mode": "standard"},
            },
        }
        if self.access_key_id:
            out["key"] = self.access_key_id
            out["secret"] = self._secret("secret_access_key")
            if self.session_token:
                out["token"] = self._secret("session_token")
        return out

    def s3fs(self) -> Any:
        """An ``s3fs.S3FileSystem`` for these options (fsspec keeps one per options).

        s3fs retries a timed-out request 5 times around botocore's own retries: a stalled
        endpoint then took (retries + 1) x 5 x the timeout. Here botocore alone retries.
        """
        import fsspec

        fs = fsspec.filesystem("s3", **self.to_s3fs())
        fs.retries = 1
        return fs

    def to_pyarrow(self) -> Any:
        """A ``pyarrow.fs.S3FileSystem`` for these options (used to scan Parquet on S3)."""
        from pyarrow import fs as pafs

        kwargs: dict[str, Any] = {
            "connect_timeout": self.connect_timeout,
            "request_timeout": self.request_timeout,
            "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=self.max_retries + 1),
        }
        if self.endpoint_url:
            scheme, _, rest = self.endpoint_url.partition("://")
            kwargs["endpoint_override"] = rest or scheme
            kwargs["scheme"] = scheme if rest else "https"
        if self.region:
            kwargs["region"] = self.region
        if self.access_key_id:
            kwargs["access_key"] = self.access_key_id
            kwargs["secret_key"] = self._secret("secret_access_key")
            if self.session_token:
                kwargs["session_token"] = self._secret("session_token")
        return pafs.S3FileSystem(**kwargs)


def _seconds(key: str, value: Any) -> float:
    """Seconds from a number or an object_store duration (``500ms``, ``30s``, ``2m``)."""
    if isinstance(value, int | float):
        return float(value)
    m = _DURATION.match(str(value))
    if m is None:
        raise ConfigError(
            f"storage option {key}={value!r} is not a duration", hint="write e.g. 30s or 500ms"
        )
    return float(m.group(1)) * _UNIT[m.group(2)]


def _duration(seconds: float) -> str:
    """object_store's duration syntax, in milliseconds: ``30000ms``."""
    return f"{max(1, round(seconds * 1000))}ms"
