"""Latency on the user's own device: tables of measured block timings, a calibrated whole-network predictor,
and the search space that budgets in milliseconds."""

from .device import LatencyError, MeasureSetting
from .predictor import Calibration, calibrate, latency_space, parse_latency, predict_ms, spread_genotypes
from .table import LatencyTable, NetworkShape, default_table_path
from .timing import Timing, time_forward

__all__ = [
    "Calibration",
    "LatencyError",
    "LatencyTable",
    "MeasureSetting",
    "NetworkShape",
    "Timing",
    "calibrate",
    "default_table_path",
    "latency_space",
    "parse_latency",
    "predict_ms",
    "spread_genotypes",
    "time_forward",
]
