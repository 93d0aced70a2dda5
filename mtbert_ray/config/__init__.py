"""The typed experiment configuration (pydantic; YAML in, validated, ``--set`` overrides), the study space files, the
declarations of what each published artefact's key is made of, and the docs generated from them.

``from mtbert_ray.config import ExperimentConfig, load_config`` — the experiment config's names are re-exported here.
"""
from mtbert_ray.config.experiment import (
    DATA_SOURCES,
    HEAD_INITS,
    MOVED_KEYS,
    CacheConfig,
    CofinetuneConfig,
    DataConfig,
    DistillConfig,
    ExperimentConfig,
    LossConfig,
    ResourcesConfig,
    SelectConfig,
    StudentConfig,
    UniqueKeyLoader,
    apply_overrides,
    check_plain_name,
    declare_data_source,
    distill_seed,
    dump_config,
    experiment_models,
    format_validation_error,
    head_teacher,
    load_config,
    micro_batch,
    parse_override,
    read_yaml,
    safe_load_unique,
    set_dotted,
    uses_cache,
    validate_config,
)

__all__ = [
    "CacheConfig", "CofinetuneConfig", "DATA_SOURCES", "DataConfig", "DistillConfig", "ExperimentConfig",
    "HEAD_INITS", "LossConfig", "MOVED_KEYS", "ResourcesConfig", "SelectConfig", "StudentConfig", "UniqueKeyLoader",
    "apply_overrides", "check_plain_name", "declare_data_source", "distill_seed", "dump_config",
    "experiment_models", "format_validation_error", "head_teacher", "load_config", "micro_batch", "parse_override",
    "read_yaml", "safe_load_unique", "set_dotted", "uses_cache", "validate_config"
]
