"""edgekd: knowledge-distillation anomaly detection from training to the factory floor."""

__version__ = "0.1.0"
