"""Thin Typer command modules over the harchos core. No logic lives here."""
