"""rtdmd-bench: few-step distillation + RL methods, trained and evaluated side by side."""

__version__ = "0.1.0"
