"""The shared engine: the equations (combine.py), training, decoding, scoring, devices and dtypes."""
