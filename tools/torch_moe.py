"""DeepSeekMoE feed-forward layers in PyTorch, matching transformers' DeepseekV3 (5.25) numerics.

Parameter names follow the Hugging Face checkpoint layout (``gate.weight``,
``gate.e_score_correction_bias``, ``experts.{e}.gate_proj.weight``, ``shared_experts.*``), so a
state dict maps onto ``model.layers.{L}.mlp.*`` without renaming. Each expert is its own module
with 2-D weights, because Muon only accepts matrices. The forward pass sorts token-expert pairs
by expert and runs one matrix product per expert, with no Python loop over tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SwiGLU(nn.Module):
    """SwiGLU feed-forward: ``down(silu(gate(x)) * up(x))``, used for dense layers and every expert."""

    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class NoAuxRouter(nn.Module):
    """Sigmoid router with bias-adjusted, group-limited top-k selection (DeepSeek-V3 "noaux_tc").

    The bias ``e_score_correction_bias`` only changes which experts are chosen. The weights
    come from the unbiased sigmoid scores, renormalised over the chosen experts when
    ``norm_topk_prob`` is set and multiplied by ``routed_scaling_factor``. Experts of groups
    that are not kept are masked with -inf before the final top-k, as transformers 5.25 does.
    """

    def __init__(self, config) -> None:
        super().__init__()
        self.num_experts = config.n_routed_experts
        self.top_k = config.num_experts_per_tok
        self.num_groups = config.n_group
        self.top_k_groups = config.topk_group
        self.norm_topk_prob = config.norm_topk_prob
        self.routed_scaling_factor = config.routed_scaling_factor
        self.weight = nn.Parameter(torch.empty(self.num_experts, config.hidden_size))
        self.register_buffer("e_score_correction_bias", torch.zeros(self.num_experts, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Route tokens ``x`` of shape [N, d].

        Returns (scores [N, E] fp32 sigmoid affinities, top-k expert ids [N, K], top-k weights [N, K]).
        """
        logits = F.linear(x.float(), self.weight.float())
        scores = logits.sigmoid()

        with torch.no_grad():
            choice = scores + self.e_score_correction_bias
            experts_per_group = self.num_experts // self.num_groups
            grouped = choice.view(-1, self.num_groups, experts_per_group)
            group_scores = grouped.topk(2, dim=-1).values.sum(dim=-1)
            kept_groups = group_scores.topk(self.top_k_groups, dim=-1, sorted=False).indices
            group_mask = torch.zeros_like(group_scores).scatter_(1, kept_groups, 1.0)
            expert_mask = group_mask.unsqueeze(-1).expand(-1, -1, experts_per_group).reshape(-1, self.num_experts)
            choice = choice.masked_fill(expert_mask == 0, float("-inf"))
            top_ids = choice.topk(self.top_k, dim=-1, sorted=False).indices

        top_weights = scores.gather(1, top_ids)
        if self.norm_topk_prob:
            top_weights = top_weights / (top_weights.sum(dim=-1, keepdim=True) + 1e-20)
        top_weights = top_weights * self.routed_scaling_factor
        return scores, top_ids, top_weights


class MoE(nn.Module):
    """Routed experts plus always-on shared experts, with load statistics for bias balancing.

    Each forward pass adds the tokens routed to each expert to ``expert_load`` (cleared by
    ``reset_statistics``). In training mode it also sets ``balance_loss``, DeepSeek-V3's
    sequence-wise auxiliary loss ``alpha * sum_i f_i * P_i``, averaged over the sequences of the
    batch. Here ``f_i = E / (K * T) * count_i`` for a sequence of T tokens, and ``P_i`` is the
    mean over the sequence of expert i's score after normalising the scores to sum to 1.
    """

    def __init__(self, config) -> None:
        super().__init__()
        self.gate = NoAuxRouter(config)
        self.experts = nn.ModuleList(
            SwiGLU(config.hidden_size, config.moe_intermediate_size) for _ in range(config.n_routed_experts)
        )
        self.shared_experts = SwiGLU(config.hidden_size, config.moe_intermediate_size * config.n_shared_experts)
        self.balance_loss_alpha = config.balance_loss_alpha
        self.register_buffer("expert_load", torch.zeros(config.n_routed_experts), persistent=False)
        self.balance_loss: torch.Tensor | None = None

    def reset_statistics(self) -> None:
        self.expert_load.zero_()
        self.balance_loss = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq_len, hidden = x.shape
        flat = x.reshape(-1, hidden)
        scores, top_ids, top_weights = self.gate(flat)

        routed = self._run_experts(flat, top_ids, top_weights.to(flat.dtype))
        output = routed.view(batch, seq_len, hidden) + self.shared_experts(x)

        counts = torch.bincount(top_ids.reshape(-1), minlength=self.gate.num_experts)
        self.expert_load += counts.to(self.expert_load.dtype)
        if self.training and self.balance_loss_alpha > 0:
            self.balance_loss = self._sequence_balance_loss(scores, top_ids, batch, seq_len)
        return output

    def _run_experts(self, flat: torch.Tensor, top_ids: torch.Tensor, top_weights: torch.Tensor) -> torch.Tensor:
        num_slots = top_ids.shape[1]
        slot_experts = top_ids.reshape(-1)
        order = torch.argsort(slot_experts, stable=True)
        slot_tokens = order // num_slots
        slot_weights = top_weights.reshape(-1)[order].unsqueeze(-1)
        counts = torch.bincount(slot_experts, minlength=len(self.experts)).tolist()

        tokens_by_expert = flat.index_select(0, slot_tokens).split(counts)
        outputs = [expert(chunk) for expert, chunk in zip(self.experts, tokens_by_expert)]
        expert_out = torch.cat(outputs, dim=0) * slot_weights

        combined = torch.zeros_like(flat)
        return combined.index_add(0, slot_tokens, expert_out)

    def _sequence_balance_loss(
        self, scores: torch.Tensor, top_ids: torch.Tensor, batch: int, seq_len: int
    ) -> torch.Tensor:
        num_experts = self.gate.num_experts
        top_k = top_ids.shape[1]

        ids = top_ids.view(batch, seq_len * top_k)
        counts = torch.zeros(batch, num_experts, device=scores.device).scatter_add_(
            1, ids, torch.ones_like(ids, dtype=torch.float32)
        )
        fraction = counts * (num_experts / (top_k * seq_len))

        normalised = scores / scores.sum(dim=-1, keepdim=True)
        mean_probability = normalised.view(batch, seq_len, num_experts).mean(dim=1)
        return self.balance_loss_alpha * (fraction * mean_probability).sum(dim=-1).mean()

    @torch.no_grad()
    def update_bias(self, rate: float) -> None:
        """Apply the auxiliary-loss-free update ``b_i += rate * sign(mean_load - load_i)``."""
        load = self.expert_load
        self.gate.e_score_correction_bias += rate * torch.sign(load.mean() - load)
