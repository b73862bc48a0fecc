"""The memory hierarchy: byte-budgeted tiers (hbm, dram, ssd) holding KV pages, experts and weights."""
