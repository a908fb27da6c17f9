"""tideserve: a self-hosted elastic LLM inference platform."""

__version__ = "0.1.0"
