"""The URI of AWS's TensorFlow Serving inference image (the SageMaker TF Serving container).

Written out rather than asking the sagemaker SDK (`sagemaker.image_uris.retrieve("tensorflow", region,
version=..., instance_type=..., image_scope="inference")`): the SDK is a large install for one lookup.
The registry accounts are those the SDK's image_uri_config/tensorflow.json lists for the Deep Learning
Containers' `tensorflow-inference` repository; `MEMEFLY_DEPLOY_MODEL_IMAGE_URI` overrides the result.
"""

from __future__ import annotations

REPOSITORY = "tensorflow-inference"
_DEFAULT_ACCOUNT = "763104351884"
_ACCOUNTS = {
    "af-south-1": "626614931356",
    "ap-east-1": "871362719292",
    "ap-northeast-3": "364406365360",
    "ap-south-2": "772153158452",
    "ap-southeast-3": "907027046896",
    "ap-southeast-4": "457447274322",
    "cn-north-1": "727897471807",
    "cn-northwest-1": "727897471807",
    "eu-central-2": "380420809688",
    "eu-south-1": "692866216735",
    "eu-south-2": "503227376785",
    "me-central-1": "914824155844",
    "me-south-1": "217643126080",
    "us-gov-east-1": "446045086412",
    "us-gov-west-1": "442386744353",
    "us-iso-east-1": "886529160074",
    "us-isob-east-1": "094389454867",
}
# ap-northeast-1/2, ap-south-1, ap-southeast-1/2, ca-central-1, eu-central-1, eu-north-1, eu-west-1/2/3,
# sa-east-1, us-east-1/2, us-west-1/2 use the default account.


def registry_account(region: str) -> str:
    return _ACCOUNTS.get(region, _DEFAULT_ACCOUNT)


def processor(instance_type: str) -> str:
    family = instance_type.removeprefix("ml.").split(".", 1)[0]
    return "gpu" if family.startswith(("p", "g")) else "cpu"


def inference_image_uri(region: str, tfs_version: str, instance_type: str) -> str:
    suffix = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"{registry_account(region)}.dkr.ecr.{region}.{suffix}/{REPOSITORY}:{tfs_version}-{processor(instance_type)}"


def repository_arn(region: str, partition: str) -> str:
    return f"arn:{partition}:ecr:{region}:{registry_account(region)}:repository/{REPOSITORY}"
