"""The widgets of the minillm TUI, one per module."""

from tui.widgets.control_bar import ControlBar, GenerationSettings, InvalidSetting
from tui.widgets.expert_grid import ExpertGrid
from tui.widgets.output_view import OutputView
from tui.widgets.page_map import PageMap
from tui.widgets.stats_panel import StatsPanel
from tui.widgets.tier_panel import TierPanel

__all__ = ["ControlBar", "GenerationSettings", "InvalidSetting", "ExpertGrid", "OutputView", "PageMap", "StatsPanel", "TierPanel"]
