"""Configuration: the project file `cmc.yaml` and one validated dataclass per command.

Precedence is always: built-in defaults < YAML file < command-line flags. Validation errors are
plain English and name the option or file at fault. The package is the lowest layer above errors
(docs/architecture.md): the option vocabularies live here, and the engine computes what they name.
"""

from cmc_cli.config.demo import DemoConfig
from cmc_cli.config.options import (COMBINE_MODES, DEFAULT_EVAL_LIMIT, DEFAULT_STRATEGY, DELTA_PRESETS, FALLBACKS, METHOD_DEFAULTS,
                                    DTYPE_NAMES, RETAIN_TERMS, SMALL_PRESET_LR, STRATEGIES, TASK_DEFAULTS, TASKS, UNLEARN_LOSSES,
                                    UNLEARN_METHODS, USER_FORMATS, check_device, check_prompt_text, check_sampling,
                                    check_user_format)
from cmc_cli.config.project import PROJECT_FILE, ModelEntry, ProjectConfig, load_project_config, project_file_path
from cmc_cli.config.runs import (DeltaSpec, EvalGeneralConfig, EvalInstructConfig, EvalTofuConfig, GenerateConfig, MapVocabConfig,
                                 ModelSelection, ShiftConfig)
from cmc_cli.config.train import TrainConfig

__all__ = ["COMBINE_MODES", "DEFAULT_EVAL_LIMIT", "DEFAULT_STRATEGY", "DemoConfig", "EvalGeneralConfig", "DELTA_PRESETS", "DTYPE_NAMES", "FALLBACKS", "METHOD_DEFAULTS", "PROJECT_FILE",
           "RETAIN_TERMS", "SMALL_PRESET_LR", "STRATEGIES", "TASK_DEFAULTS", "TASKS", "UNLEARN_LOSSES", "UNLEARN_METHODS", "USER_FORMATS",
           "DeltaSpec", "EvalInstructConfig", "EvalTofuConfig", "GenerateConfig", "MapVocabConfig", "ModelEntry", "ModelSelection", "ShiftConfig",
           "ProjectConfig", "TrainConfig", "check_device", "check_prompt_text", "check_sampling", "check_user_format", "load_project_config",
           "project_file_path"]
