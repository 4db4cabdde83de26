"""Model families and the registry."""

from nf.models.nf_regnet import NFRegNet
from nf.models.nfnet import NFNet
from nf.models.registry import (
    DEFAULT_IMAGE_SIZE,
    MODELS,
    RESNET_DEPTHS,
    TEST_IMAGE_SIZE,
    create_model,
    create_model_from_dict,
    list_models,
    model_kwargs,
    model_options,
)
from nf.models.resnet import ResNetV2
from nf.models.stages import inference_copy, unstack_blocks

__all__ = [
    "DEFAULT_IMAGE_SIZE",
    "MODELS",
    "RESNET_DEPTHS",
    "TEST_IMAGE_SIZE",
    "NFNet",
    "NFRegNet",
    "ResNetV2",
    "create_model",
    "create_model_from_dict",
    "inference_copy",
    "list_models",
    "model_kwargs",
    "model_options",
    "unstack_blocks",
]
