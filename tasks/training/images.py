"""Which container image a SageMaker training job runs.

Three cases, in this order:

1. the customer's own ECR image (``aws.training_image``: updraft's ``images/training``
   pushed to their account) runs as given;
2. a user's own script (``train.entry_point``) runs in the AWS framework image of
   ``train.framework`` (pytorch, sklearn, xgboost) at ``train.framework_version``: GPU
   or CPU build by the instance type, newest Python the image offers;
3. otherwise the AWS XGBoost image (``1.7-1``).

Cases 2 and 3 ask the SageMaker Python SDK (``sagemaker.core.image_uris``), which keeps the
registry accounts, regions, versions and tags of every framework image in files it ships,
so the lookup needs no network. The SDK takes over a second to import: it is imported on
first use, never at module import, and a missing SDK is a clear error that names the fix.
"""

from __future__ import annotations

import importlib
import re
from types import ModuleType
from typing import TYPE_CHECKING

from tasks.errors import ConfigError

if TYPE_CHECKING:
    from tasks.config import PipelineConfig

IMAGE_SCOPE = "training"
#: The AWS XGBoost image when the config names no image and no script.
DEFAULT_XGBOOST_VERSION = "1.7-1"
#: Without ``train.framework``, a script runs in the PyTorch image (the common deep-learning case).
DEFAULT_FRAMEWORK = "pytorch"
#: The newest version the SDK knows within this major version, per framework (None: the newest of all).
DEFAULT_MAJOR = {"pytorch": "2", "sklearn": None, "xgboost": None}
SDK_MODULE = "sagemaker.core.image_uris"

# Plain release versions: pytorch "2.10.0", sklearn "1.4-2", xgboost "1.7-1" (not aliases like "latest" or "1.4-2-py312").
_RELEASE_RE = re.compile(r"^\d+(\.\d+)*(-\d+)?$")


def _sdk() -> ModuleType:
    try:
        return importlib.import_module(SDK_MODULE)
    except ImportError as exc:
        raise ConfigError(
            "finding the AWS framework image for a training job needs the SageMaker Python SDK "
            f"({SDK_MODULE}; pip install sagemaker-core), which is not installed ({exc}); "
            "install it, or set aws.training_image to the ECR URI of your own training image"
        ) from None


def is_gpu_instance(instance_type: str) -> bool:
    """Whether a SageMaker instance type has NVIDIA GPUs (the g and p families: ml.g5.xlarge, ml.p4d.24xlarge)."""
    family = instance_type.removeprefix("ml.").split(".", 1)[0]
    return bool(family) and family[0] in ("g", "p")


def _version_key(version: str) -> tuple[int, ...]:
    """``"2.10"`` and ``"2.10.0"`` compare equal; ``"1.4-2"`` is (1, 4, 2)."""
    parts = tuple(int(part) for part in re.split(r"[.-]", version))
    return parts + (0,) * (4 - len(parts))


def known_versions(framework: str) -> list[str]:
    """Release versions of ``framework``'s training images the installed SDK knows, oldest first."""
    sdk = _sdk()
    try:
        versions = sdk.list_versions(framework, IMAGE_SCOPE)
    except ValueError as exc:
        raise ConfigError(f"the SageMaker SDK has no training images for framework {framework!r}: {exc}") from None
    return sorted((v for v in versions if _RELEASE_RE.match(v)), key=_version_key)


def default_framework_version(framework: str) -> str:
    """The newest version of ``framework`` the SDK knows (PyTorch: the newest 2.x)."""
    major = DEFAULT_MAJOR.get(framework)
    versions = [v for v in known_versions(framework) if major is None or v.split(".")[0] == major]
    if not versions:
        raise ConfigError(
            f"the installed SageMaker SDK knows no {framework} {major + '.x ' if major else ''}training image; "
            "set train.framework_version"
        )
    # Of equal versions prefer the fully specified form ("2.10.0" over its alias "2.10").
    return max(versions, key=lambda v: (_version_key(v), len(v)))


def framework_image_uri(
    framework: str,
    region: str,
    instance_type: str,
    version: str | None = None,
    py_version: str | None = None,
) -> str:
    """The AWS training image of ``framework`` at ``version`` for ``instance_type`` (GPU build on g/p instances).

    ``version`` defaults to :func:`default_framework_version`; ``py_version`` to the newest
    Python that image version offers. An unknown version is a :class:`ConfigError` that
    lists the versions the SDK knows.
    """
    sdk = _sdk()
    version = version or default_framework_version(framework)
    try:
        py_versions = sdk.list_py_versions(framework, version, IMAGE_SCOPE)
    except ValueError:
        raise ConfigError(
            f"train.framework_version {version!r} is not a {framework} training image the SageMaker SDK knows; "
            f"known versions: {', '.join(known_versions(framework))}"
        ) from None
    if py_version is None and py_versions:
        py_version = max(py_versions, key=lambda v: int(re.sub(r"\D", "", v) or 0))
    try:
        return sdk.retrieve(
            framework=framework,
            region=region,
            version=version,
            py_version=py_version,
            instance_type=instance_type,
            image_scope=IMAGE_SCOPE,
        )
    except ValueError as exc:
        hint = ""
        if is_gpu_instance(instance_type) and "processor" in str(exc).lower():
            hint = f" ({framework} {version} images are CPU only: choose a CPU instance type such as ml.m5.xlarge)"
        raise ConfigError(f"no {framework} {version} training image for {instance_type} in {region}: {exc}{hint}") from None


def training_image_uri(
    *,
    region: str,
    instance_type: str,
    own_image: str | None = None,
    entry_point: str | None = None,
    framework: str | None = None,
    framework_version: str | None = None,
    xgboost_version: str = DEFAULT_XGBOOST_VERSION,
) -> str:
    """The image a training job runs: our own ECR image, else the script's framework image, else AWS XGBoost."""
    if own_image:
        return own_image
    if entry_point:
        return framework_image_uri(framework or DEFAULT_FRAMEWORK, region, instance_type, framework_version)
    return framework_image_uri("xgboost", region, instance_type, xgboost_version)


def training_image_uri_from_config(config: PipelineConfig, region: str) -> str:
    """:func:`training_image_uri` with the settings of ``aws`` and ``train``."""
    return training_image_uri(
        region=config.aws.region or region,
        instance_type=config.train.instance_type,
        own_image=config.aws.training_image,
        entry_point=config.train.entry_point,
        framework=config.train.framework,
        framework_version=config.train.framework_version,
    )
