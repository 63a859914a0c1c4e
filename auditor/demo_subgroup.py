"""Deprecated import path: moved to :mod:`auditor.demo.subgroup` (shim kept for one release)."""

from auditor.demo.subgroup import *  # noqa: F403
from auditor.demo.subgroup import (  # noqa: F401
    CLASSES,
    IMAGE_SIZE,
    MEAN,
    STD,
    TAG_SIZE,
    TAGGED_CLASS,
    VARIANTS,
    WEIGHTS_DIR,
    SubgroupNet,
    generate,
    load,
    main,
    render,
    to_tensor,
    train,
    weights_path,
)
