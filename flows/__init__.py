"""Prefect flows: they only connect the stage tasks."""
