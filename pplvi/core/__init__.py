"""pplvi's core: generative functions, the sample primitive, estimators, the ADEV interpreter, objectives."""
