"""Errors that mean "the user asked for something invalid" (the CLI turns them into exit code 2)."""


class PretrainInputError(ValueError):
    """Invalid configuration, data location or output folder for a pretraining run."""
