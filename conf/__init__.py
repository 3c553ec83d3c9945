"""Configuration files (YAML), installed as package data; see ``contract.config``."""

from pathlib import Path

CONF_DIR = Path(__file__).resolve().parent
