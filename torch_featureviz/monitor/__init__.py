"""Watch a training run: the :class:`FeatureMonitor` facade and its parts (config, schedule,
statistics, channel choice, byte budget, background writer, sink, sharding)."""

from torch_featureviz.monitor.config import MonitorConfig
from torch_featureviz.monitor.feature_monitor import FeatureMonitor

__all__ = ["FeatureMonitor", "MonitorConfig"]
