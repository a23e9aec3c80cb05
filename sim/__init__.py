"""The MQTT test harness: a virtual fleet with known ground truth.

``simulate(scenario, broker_url, out_dir, devices=..., days=..., seed=..., speed=...,
progress=...)`` runs everything; ``prepare`` + ``publish_plan`` split it so a caller can
start consumers after the registry is written and before the first message flows.
"""

from .errors import BrokerError, OutputError, ScenarioError, SimError
from .run import Plan, Progress, SimResult, prepare, publish_plan, resolve, simulate
from .scenario import DEFAULT_SCENARIO, Scenario, builtin_names, load_scenario

__all__ = [
    "DEFAULT_SCENARIO",
    "BrokerError",
    "OutputError",
    "Plan",
    "Progress",
    "Scenario",
    "ScenarioError",
    "SimError",
    "SimResult",
    "builtin_names",
    "load_scenario",
    "prepare",
    "publish_plan",
    "resolve",
    "simulate",
]
