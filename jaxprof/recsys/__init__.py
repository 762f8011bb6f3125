"""Downstream recommender side: metrics, two-tower matcher, baselines, SASRec."""
