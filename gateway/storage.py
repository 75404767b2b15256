"""Permalinks: rendered memes stored content-addressed, in a local folder or an S3 bucket.

The id is the SHA-256 of the bytes, so storing the same meme twice is one object. A local write goes
to a temporary file that is renamed into place, an S3 write is one PutObject: a reader never sees
half a meme.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Protocol

EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}
MEDIA_TYPES = {ext: media for media, ext in EXTENSIONS.items()}
_ID = re.compile(r"^[0-9a-f]{32}\.(png|jpg|webp)$")


def meme_id(content: bytes, media_type: str) -> str:
    return f"{hashlib.sha256(content).hexdigest()[:32]}.{EXTENSIONS[media_type]}"


def valid_id(identifier: str) -> bool:
    return bool(_ID.match(identifier))


class MemeStore(Protocol):
    def put(self, content: bytes, media_type: str) -> str: ...

    def get(self, identifier: str) -> tuple[bytes, str] | None: ...


class LocalMemeStore:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def put(self, content: bytes, media_type: str) -> str:
        identifier = meme_id(content, media_type)
        target = self.folder / identifier
        if not target.exists():
            handle, temporary = tempfile.mkstemp(dir=self.folder, prefix=".incoming-")
            try:
                with os.fdopen(handle, "wb") as f:
                    f.write(content)
                os.replace(temporary, target)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
        return identifier

    def get(self, identifier: str) -> tuple[bytes, str] | None:
        if not valid_id(identifier):
            return None
        path = self.folder / identifier
        if not path.is_file():
            return None
        return path.read_bytes(), MEDIA_TYPES[identifier.rsplit(".", 1)[1]]


class S3MemeStore:
    def __init__(self, bucket: str, prefix: str = "memes/", client=None) -> None:
        import boto3

        self.bucket = bucket
        self.prefix = prefix
        self.client = client or boto3.client("s3")

    def put(self, content: bytes, media_type: str) -> str:
        identifier = meme_id(content, media_type)
        self.client.put_object(Bucket=self.bucket, Key=self.prefix + identifier, Body=content, ContentType=media_type)
        return identifier

    def get(self, identifier: str) -> tuple[bytes, str] | None:
        if not valid_id(identifier):
            return None
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.prefix + identifier)
        except self.client.exceptions.NoSuchKey:
            return None
        return response["Body"].read(), response.get("ContentType") or MEDIA_TYPES[identifier.rsplit(".", 1)[1]]
