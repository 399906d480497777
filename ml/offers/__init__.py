"""Offer model: multi-arm uplift learners, the offer policy and its evaluation."""
