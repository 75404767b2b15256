"""The URI of AWS's TensorFlow Serving inference image (the SageMaker TF Serving container), from the SageMaker SDK.

`sagemaker.core.image_uris.retrieve` (SageMaker Python SDK v3, package sagemaker-core) knows each region's
registry account and each version's tag form (`2.19.0-cpu`, but `2.20-cpu-py312-amzn2023-sagemaker-v1`). It
reads the table shipped in the package and calls no AWS API. The framework version is a parameter (deploy passes
`SAGEMAKER_TFS_VERSION` from serving/versions.env); `MEMEFLY_DEPLOY_MODEL_IMAGE_URI` overrides the result.
"""

from __future__ import annotations

from sagemaker.core import image_uris

REPOSITORY = "tensorflow-inference"


def inference_image_uri(region: str, tfs_version: str, instance_type: str) -> str:
    """The `tensorflow-inference` image for `tfs_version` on `instance_type` (ml.g*/ml.p* take the GPU image).

    Raises ValueError, naming the versions there are, for a version the SDK does not know.
    """
    return image_uris.retrieve(
        "tensorflow", region, version=tfs_version, instance_type=instance_type, image_scope="inference"
    )
