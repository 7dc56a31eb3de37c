"""medfm-bench: which natural-domain foundation model to start from, and how much to fine-tune."""
__version__ = "0.1.0"
