"""Autoscaling: the policy a service declares and the pure decisions made from it."""
