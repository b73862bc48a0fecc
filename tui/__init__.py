"""The minillm terminal UI: generate text while the memory tiers, KV pages and experts update live.

Start it with `minillm tui [--model DIR] [--hbm SIZE] [--dram SIZE] ...`. The engine package
never imports this one, so minillm works without Textual installed.
"""
