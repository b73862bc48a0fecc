"""The decode byte counts of tools/bench.py against hand counts on the fixture configs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from minillm.config import ModelConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tools import bench  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"

# v3_bf16: D 64, V 256, 2 layers (dense, then MoE), 4 heads, q_lora 32, kv_lora 24, nope 12, rope 8,
# v_head 10, dense FFN 48, 8 routed experts of width 8, 1 shared expert, 2 experts per token.
ATTENTION = (32 * 64 + 32 + 4 * 20 * 32) + (32 * 64 + 24) + 4 * 22 * 24 + 64 * 40  # q, kv_a, kv_b, o
DENSE_LAYER = 2 * 64 + ATTENTION + 3 * 64 * 48
MOE_LAYER = 2 * 64 + ATTENTION + (8 * 64 + 8) + 3 * 64 * 8 + 2 * 3 * 64 * 8  # router, shared, 2 routed
HEAD = 64 + 64 + 256 * 64  # one embedding row, final norm, lm_head


def test_decode_bytes_match_hand_count():
    cfg = ModelConfig.from_file(FIXTURES / "v3_bf16")
    assert bench.layer_values(cfg, 0, experts_read=2) == DENSE_LAYER
    assert bench.layer_values(cfg, 1, experts_read=2) == MOE_LAYER
    assert bench.decode_weight_bytes(cfg) == 4 * (DENSE_LAYER + MOE_LAYER + HEAD)


def test_decode_bytes_with_all_experts():
    cfg = ModelConfig.from_file(FIXTURES / "v3_bf16")
    assert bench.decode_weight_bytes(cfg, experts_read=8) - bench.decode_weight_bytes(cfg) == 4 * 6 * 3 * 64 * 8


def test_decode_bytes_mtp_pass():
    cfg = ModelConfig.from_file(FIXTURES / "v3_bf16")
    # embedding row, enorm, hnorm, eh_proj (64 x 128), an MoE layer, shared_head norm and head
    module = 64 + 64 + 64 + 64 * 128 + MOE_LAYER + 64 + 256 * 64
    assert bench.decode_weight_bytes(cfg, mtp_passes=1) - bench.decode_weight_bytes(cfg) == 4 * module
    assert bench.decode_weight_bytes(cfg, mtp_passes=2) - bench.decode_weight_bytes(cfg) == 8 * module


def test_engram_layer_bytes():
    raw = json.loads((FIXTURES / "torch" / "engram_small" / "config.json").read_text())
    with_engram = ModelConfig.from_dict(raw)
    without = ModelConfig.from_dict({key: value for key, value in raw.items() if key != "engram"})
    # D 64, concatenated row width 2 x 64, kernel 4, 8 tables of 16-wide rows
    engram = 2 * (64 * 128 + 64) + 3 * 64 + 64 * 4 + 8 * 16
    assert bench.layer_values(with_engram, 1, 2) - bench.layer_values(without, 1, 2) == engram
    assert bench.layer_values(with_engram, 0, 2) == bench.layer_values(without, 0, 2)


def test_kv_bytes_average_context():
    cfg = ModelConfig.from_file(FIXTURES / "v3_bf16")
    # 2 layers x (24 + 8) values x 4 bytes x (32 + 128 / 2) tokens
    assert bench.kv_bytes_per_token(cfg, 32, 128) == 2 * 32 * 4 * 96
    assert bench.kv_bytes_per_token(cfg, 32, 128, mtp=True) == 3 * 32 * 4 * 96
