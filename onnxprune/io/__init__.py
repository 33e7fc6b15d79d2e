"""Model and data input/output: loading and saving models (external data included), atomic files, calibration data."""
