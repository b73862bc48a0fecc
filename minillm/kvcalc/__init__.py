"""The KV cache calculator: how many bytes a model's KV cache takes at a given context length.

    from minillm.kvcalc import kv_cache_size
    report = kv_cache_size("deepseek-v4-pro", 1_000_000, kv_bytes=1, indexer_bytes=2)
    report.total_gib            # 5.48...
    report.layer_types          # one LayerTypeUsage per layout: csa (30 layers), hca (31 layers)

The first argument is a preset name (see PRESETS), a checkpoint directory, a parsed config.json
or a ModelSpec. The command line front end is `minillm kv-calc`.
"""

from minillm.kvcalc.config_reader import SUPPORTED_MODEL_TYPES, read_config_file, spec_from_config
from minillm.kvcalc.formulas import LayerKind
from minillm.kvcalc.presets import PRESETS, Preset, get_preset
from minillm.kvcalc.report import (KVReport, LayerTypeUsage, kv_baselines, kv_cache_size, preset_reports,
                                   resolve_spec)
from minillm.kvcalc.spec import Baselines, ModelSpec, baseline_bytes_per_token
from minillm.kvcalc.units import GIB, KVCalcError, parse_token_count

__all__ = ["kv_cache_size", "kv_baselines", "baseline_bytes_per_token", "preset_reports", "resolve_spec", "read_config_file",
           "spec_from_config", "parse_token_count", "KVReport", "LayerTypeUsage", "Baselines", "ModelSpec",
           "LayerKind", "Preset", "PRESETS", "get_preset", "SUPPORTED_MODEL_TYPES", "KVCalcError", "GIB"]
