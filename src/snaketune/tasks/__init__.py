"""Evaluation tasks shipped with snaketune (inspect-ai)."""
