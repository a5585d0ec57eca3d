"""Configuration: the project file `cmc.yaml` and one validated dataclass per command.

Precedence is always: built-in defaults < YAML file < command-line flags. Validation errors are
plain English and name the option or file at fault. The package is the lowest layer above errors
(docs/architecture.md): the option vocabularies live here, and the engine computes what they name.
"""

import importlib

_HOME = {  # name -> the submodule that defines it; loaded on first use, so that `cmc --help` reads no YAML library
    "DemoConfig": "demo", "PROJECT_FILE": "project", "ModelEntry": "project", "ProjectConfig": "project",
    "load_project_config": "project", "project_file_path": "project", "TrainConfig": "train",
    **dict.fromkeys(("DeltaSpec", "EvalGeneralConfig", "EvalInstructConfig", "EvalTofuConfig", "GenerateConfig",
                     "MapVocabConfig", "ModelSelection", "ShiftConfig"), "runs"),
    **dict.fromkeys(("COMBINE_MODES", "DEFAULT_EVAL_LIMIT", "DEFAULT_STRATEGY", "DELTA_PRESETS", "FALLBACKS",
                     "METHOD_DEFAULTS", "DTYPE_NAMES", "RETAIN_TERMS", "SMALL_PRESET_LR", "STRATEGIES", "TASK_DEFAULTS",
                     "TASKS", "UNLEARN_LOSSES", "UNLEARN_METHODS", "USER_FORMATS", "check_device", "check_prompt_text",
                     "check_sampling", "check_user_format"), "options"),
}


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module 'cmc_cli.config' has no attribute '{name}'")
    value = getattr(importlib.import_module(f"cmc_cli.config.{_HOME[name]}"), name)
    globals()[name] = value
    return value


__all__ = sorted(_HOME)
