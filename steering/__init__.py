"""Steering: emotion directions applied at inference (builds on `probe`)."""
