"""Load classifiers from model zoos, archives and Python files, with their preprocessing.

A *model spec* names where a model comes from (``mperturb models`` lists them):

=============================  =================================================================
``demo``                       the small CNN bundled with the package
``torchvision:NAME[:WEIGHTS]`` torchvision classification model (weights from the torch hub cache)
``timm:NAME``                  timm model (weights from the local cache)
``hf:ID_OR_DIR``               transformers image classifier (hub cache or a local folder)
``torchscript:FILE``           ``torch.jit.save`` archive
``export:FILE``                ``torch.export.save`` archive
``python:FILE.py:FACTORY``     ``FACTORY()`` from a Python file
=============================  =================================================================

Example:
    >>> from meaningful_perturbation.models import list_model_specs
    >>> list_model_specs()[0].pattern
    'demo'
"""

from meaningful_perturbation.models.base import PREPROCESSING_EXTRA_FILE, LoadedModel
from meaningful_perturbation.models.channels import (
    CLI_OPTION_NAMES,
    check_input_channels,
    input_dtype,
    infer_channels,
    resolve_model_preprocessing,
)
from meaningful_perturbation.models.registry import ModelSpecInfo, list_model_specs, load_model
from meaningful_perturbation.models.weights import apply_state_dict, load_state_dict_file

__all__ = [
    "CLI_OPTION_NAMES",
    "PREPROCESSING_EXTRA_FILE",
    "LoadedModel",
    "ModelSpecInfo",
    "apply_state_dict",
    "check_input_channels",
    "input_dtype",
    "infer_channels",
    "list_model_specs",
    "load_model",
    "load_state_dict_file",
    "resolve_model_preprocessing",
]
