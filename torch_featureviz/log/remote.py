"""Log directories given as fsspec URLs (``s3://``, ``gs://``, ``memory://``, ``file://``...).

TensorBoard reads such URLs itself; this module lets the package write there too. fsspec is an
optional extra (``pip install torch-featureviz[remote]``), imported only when a URL is given.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["is_url", "remote_dir"]

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")

#: The package that provides each common protocol's filesystem, for the error message.
_PACKAGES = {
    "s3": "s3fs",
    "s3a": "s3fs",
    "gs": "gcsfs",
    "gcs": "gcsfs",
    "az": "adlfs",
    "abfs": "adlfs",
    "abfss": "adlfs",
    "hdfs": "pyarrow",
    "sftp": "paramiko",
    "ssh": "paramiko",
    "hf": "huggingface_hub",
}


def is_url(log_dir: Any) -> bool:
    """Whether ``log_dir`` is a URL (``scheme://...``) rather than a local path.

    Example::

        >>> is_url("s3://bucket/runs/exp1"), is_url("runs/exp1")
        (True, False)
    """
    return isinstance(log_dir, str) and bool(_URL.match(log_dir))


def remote_dir(url: str) -> tuple[Any, str]:
    """The fsspec filesystem of ``url`` and the directory's path on it, created if needed.

    Raises:
        ImportError: fsspec, or the package of the URL's filesystem (s3fs for ``s3://``,
            gcsfs for ``gs://``...), is not installed; the message names what to install.
        ValueError: fsspec knows no filesystem for the URL's protocol.
        OSError: the directory cannot be created.
    """
    protocol = url.split("://", 1)[0].lower()
    try:
        import fsspec
    except ImportError as e:
        raise ImportError(
            f"log_dir {url!r} is a URL: writing to it needs fsspec, which is not installed. "
            "Install the extra: pip install torch-featureviz[remote]"
        ) from e
    try:
        fs, path = fsspec.core.url_to_fs(url)
    except ImportError as e:
        package = _PACKAGES.get(protocol)
        hint = f"pip install {package}" if package else "install the package it names"
        raise ImportError(
            f"log_dir {url!r}: the {protocol}:// filesystem is not installed ({e}); {hint}."
        ) from e
    except ValueError as e:
        raise ValueError(
            f"log_dir {url!r}: fsspec knows no filesystem for {protocol}:// ({e}); use a local "
            "directory or an fsspec URL such as s3://bucket/runs."
        ) from e
    try:
        fs.makedirs(path, exist_ok=True)
    except OSError as e:
        raise OSError(f"cannot create {url!r}: {e}. Choose a writable location.") from e
    return fs, path
