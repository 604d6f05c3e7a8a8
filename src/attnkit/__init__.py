"""attnkit: sequence-to-sequence learning with attention, and the study that compares it with recurrence."""

__version__ = "0.1.0"
