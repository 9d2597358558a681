"""The runtime image: tags, the build decision, the builder, base-image bootstrap."""

from openhands_rt.image.bootstrap import (
    DEFAULT_BASE_IMAGE,
    DEFAULT_BASE_PACKAGES,
    bootstrap_base_image,
)
from openhands_rt.image.build import (
    DEFAULT_REPOSITORY,
    LABEL_PREFIX,
    BuildFrom,
    BuildProgressCallback,
    BuildResult,
    build_runtime_image,
    runtime_image_tags,
)
from openhands_rt.image.build_progress import BuildProgress
from openhands_rt.image.progress import ProgressCallback
from openhands_rt.image.tags import (
    ImageTags,
    compute_tags,
    default_version,
    dir_hash,
    tag_safe_base_name,
)

__all__ = [
    "DEFAULT_BASE_IMAGE",
    "DEFAULT_BASE_PACKAGES",
    "DEFAULT_REPOSITORY",
    "LABEL_PREFIX",
    "BuildFrom",
    "BuildProgress",
    "BuildProgressCallback",
    "BuildResult",
    "ImageTags",
    "ProgressCallback",
    "bootstrap_base_image",
    "build_runtime_image",
    "compute_tags",
    "default_version",
    "dir_hash",
    "runtime_image_tags",
    "tag_safe_base_name",
]
