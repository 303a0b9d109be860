"""Command-line interface (typer). Commands stay thin; logic lives in the library."""
