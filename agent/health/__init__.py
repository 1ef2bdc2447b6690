"""Health rules: pure functions from readings (and thresholds) to findings."""
