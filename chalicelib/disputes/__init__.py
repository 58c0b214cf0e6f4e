"""Disputes (SPEC §8): "this account is not mine", forwarded to the company, tracked, answered by SMS."""
