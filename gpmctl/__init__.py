"""gpmctl: General Preference Models (GPM) and Bradley-Terry reward models, from data to alignment."""

__version__ = "0.1.0"
