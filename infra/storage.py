"""S3: the artifacts bucket and the model archive in it (uploaded with the SageMaker SDK's `Session.upload_data`).

The bucket's setup (public access block, encryption, tags) and the HEAD that finds an archive already there stay
boto3: the SDK creates only its own default bucket, `sagemaker-<region>-<account>`, with none of these settings.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from urllib.parse import urlencode

from botocore.exceptions import ClientError

from infra.aws import error_code
from infra.changes import Action
from infra.context import DeployError, Stack
from infra.model_archive import ModelArchive
from infra.tags import as_dict, as_list, format_model_versions, is_ours

SHA256_METADATA = "sha256"


def bucket_tags(s3, bucket: str) -> dict[str, str]:
    try:
        return as_dict(s3.get_bucket_tagging(Bucket=bucket)["TagSet"])
    except ClientError as error:
        if error_code(error) == "NoSuchTagSet":
            return {}
        raise


def ensure_bucket(stack: Stack) -> str:
    s3, bucket = stack.aws.client("s3"), stack.bucket
    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError as error:
        if error_code(error) in ("403", "AccessDenied"):
            raise DeployError(f"bucket {bucket} exists but is not readable with these credentials") from error
        if error_code(error) not in ("404", "NoSuchBucket"):
            raise
        stack.report.record(Action.CREATE, "s3 bucket", bucket, "private, encrypted, tagged")
        if stack.apply:
            location = {} if stack.aws.region == "us-east-1" else {"LocationConstraint": stack.aws.region}
            s3.create_bucket(Bucket=bucket, **({"CreateBucketConfiguration": location} if location else {}))
            s3.put_public_access_block(
                Bucket=bucket,
                PublicAccessBlockConfiguration={
                    "BlockPublicAcls": True,
                    "IgnorePublicAcls": True,
                    "BlockPublicPolicy": True,
                    "RestrictPublicBuckets": True,
                },
            )
            s3.put_bucket_encryption(
                Bucket=bucket,
                ServerSideEncryptionConfiguration={
                    "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
                },
            )
            s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": as_list(stack.tags())})
        return bucket
    ours = is_ours(bucket_tags(s3, bucket), stack.settings.prefix)
    detail = (
        "" if ours else f"yours, not this deployment's: destroy keeps it and removes only {stack.names.object_prefix}*"
    )
    stack.report.record(Action.UNCHANGED, "s3 bucket", bucket, detail)
    return bucket


def ensure_model_object(stack: Stack, bucket: str, archive: ModelArchive) -> str:
    """Uploads the archive under a key named by its SHA-256; returns its s3:// URL."""
    s3 = stack.aws.client("s3")
    key = stack.names.model_key(stack.settings.model_name, archive.sha256)
    url = f"s3://{bucket}/{key}"
    versions = format_model_versions(archive.models)
    try:
        head = s3.head_object(Bucket=bucket, Key=key)
        if head.get("Metadata", {}).get(SHA256_METADATA) == archive.sha256:
            stack.report.record(Action.UNCHANGED, "s3 object", url, f"model versions {versions}")
            return url
    except ClientError as error:
        if error_code(error) not in ("404", "NoSuchKey", "NoSuchBucket"):
            raise
    size_mb = archive.path.stat().st_size / 1e6
    stack.report.record(Action.CREATE, "s3 object", url, f"model versions {versions}, {size_mb:.1f} MB")
    if stack.apply:
        key_prefix, name = key.rsplit("/", 1)
        extra_args = {
            "Metadata": {SHA256_METADATA: archive.sha256, "model-versions": versions},
            "Tagging": urlencode(stack.tags()),
            "ServerSideEncryption": "AES256",
        }
        with tempfile.TemporaryDirectory(prefix="memefly-upload-") as folder:
            # upload_data names the object `<key_prefix>/<file name>`: a prebuilt archive may be named otherwise.
            path = archive.path if archive.path.name == name else Path(folder) / name
            if path != archive.path:
                path.symlink_to(archive.path.resolve())
            uploaded = stack.aws.sagemaker.upload_data(str(path), bucket, key_prefix, extra_args=extra_args)
        if uploaded != url:
            raise DeployError(f"the SageMaker SDK uploaded the model archive to {uploaded}, not {url}")
    return url
