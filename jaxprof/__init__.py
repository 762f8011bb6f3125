"""jaxprof: train language models with RL to write text a recommender can use."""

__version__ = "0.1.0"
