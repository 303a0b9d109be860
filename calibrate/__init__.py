"""Post-training calibration: temperature scaling (:mod:`.temperature`) and INT8 calibration data (:mod:`.int8`)."""
