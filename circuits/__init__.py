"""Circuits: attribution and activation patching on emotion directions (builds on `probe`)."""
