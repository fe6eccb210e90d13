"""Merge a pre-trained and an instruction-tuned model at λ, and measure accuracy and calibration."""

__version__ = "0.1.0"
