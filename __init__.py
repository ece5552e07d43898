"""Checkout root: installed, cli.py becomes gpufocus.app.cli (see pyproject.toml)."""
