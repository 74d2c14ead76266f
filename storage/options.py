"""Storage credentials: one typed object rendered for deltalake, s3fs, pyarrow and lance."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, SecretStr

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


class StorageOptions(BaseModel):
    """S3-compatible credentials and endpoint; secrets never appear in ``repr``.

    Example:
        >>> o = StorageOptions.from_mapping({"AWS_REGION": "eu-west-1"}, env={})
        >>> o.to_delta()
        {'AWS_REGION': 'eu-west-1'}
    """

    model_config = ConfigDict(frozen=True)

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None
    session_token: SecretStr | None = None
    allow_http: bool | None = None

    @classmethod
    def from_mapping(
        cls, options: Mapping[str, Any] | None = None, *, env: Mapping[str, str] | None = None
    ) -> StorageOptions:
        """Options from deltalake-style keys; missing ones fall back to ``AWS_*`` variables."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for key, name in _KEYS.items():
            if name not in values and env.get(key):
                values[name] = env[key]
        for key, value in (options or {}).items():
            upper = key.upper()
            field = _KEYS.get(upper) or _KEYS.get("AWS_" + upper)
            if field is None:
                raise ConfigError(
                    f"unknown storage option {key!r}",
                    hint="use one of " + ", ".join(sorted(set(_KEYS))),
                )
            values[field] = value
        if isinstance(values.get("allow_http"), str):
            values["allow_http"] = values["allow_http"].strip().lower() in _TRUE
        if values.get("allow_http") is None and str(values.get("endpoint_url", "")).startswith(
            "http://"
        ):
            values["allow_http"] = True
        return cls(**values)

    def _secret(self, name: str) -> str | None:
        value = getattr(self, name)
        return value.get_secret_value() if value is not None else None

    def to_delta(self) -> dict[str, str]:
        """deltalake / object_store keys (conditional PUT is its default on S3)."""
        out = {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_REGION": self.region,
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self._secret("secret_access_key"),
            "AWS_SESSION_TOKEN": self._secret("session_token"),
            "AWS_ALLOW_HTTP": None if self.allow_http is None else str(self.allow_http).lower(),
        }
        return {k: v for k, v in out.items() if v is not None}

    def to_lance(self) -> dict[str, str]:
        """lance / lancedb keys: the same names in lower case."""
        return {k.lower(): v for k, v in self.to_delta().items()}

    def to_s3fs(self) -> dict[str, Any]:
        """Keyword arguments for ``s3fs.S3FileSystem``."""
        client: dict[str, Any] = {}
        if self.endpoint_url:
            client["endpoint_url"] = self.endpoint_url
        if self.region:
            client["region_name"] = self.region
        out: dict[str, Any] = {"client_kwargs": client}
        if self.access_key_id:
            out["key"] = self.access_key_id
            out["secret"] = self._secret("secret_access_key")
            if self.session_token:
                out["token"] = self._secret("session_token")
        return out

    def to_pyarrow(self) -> Any:
        """A ``pyarrow.fs.S3FileSystem`` for these options (used to scan Parquet on S3)."""
        from pyarrow import fs as pafs

        kwargs: dict[str, Any] = {}
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
