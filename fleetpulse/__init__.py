"""fleetpulse: the command-line entry point that dispatches to agent, central, sim and demo."""

__version__ = "0.1.0"
