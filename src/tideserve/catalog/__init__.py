"""Model plaza (built-in cards) and the memory estimator that decides where a model fits."""
