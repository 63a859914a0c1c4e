"""The demos: a synthetic shortcut dataset with a tiny CNN (:mod:`auditor.demo.shortcut`, the
``auditor demo`` command) and the subgroup case (:mod:`auditor.demo.subgroup`).

``auditor.demo:build_model`` (the factory the demo config names) resolves here.
"""

from auditor.demo.shortcut import (
    CLASSES,
    DEMO_CONFIG,
    IMAGE_SIZE,
    MEAN,
    SHORTCUT_CLASS,
    STD,
    VARIANTS,
    WEIGHTS_DIR,
    DemoNet,
    TrainReport,
    build_model,
    generate_arrays,
    main,
    render_sample,
    run_demo,
    stripes_for,
    train,
    weights_path,
    write_dataset,
    write_demo_inputs,
)

__all__ = [
    "CLASSES",
    "DEMO_CONFIG",
    "IMAGE_SIZE",
    "MEAN",
    "SHORTCUT_CLASS",
    "STD",
    "VARIANTS",
    "WEIGHTS_DIR",
    "DemoNet",
    "TrainReport",
    "build_model",
    "generate_arrays",
    "main",
    "render_sample",
    "run_demo",
    "stripes_for",
    "train",
    "weights_path",
    "write_dataset",
    "write_demo_inputs",
]
