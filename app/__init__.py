"""TuneDeck: mission control for fine-tuning open LLMs on one Docker host."""

__version__ = "0.1.0"
