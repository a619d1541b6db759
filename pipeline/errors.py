"""The one error type a stage reports to its user (pipeline.cli turns it into one line)."""


class PipelineError(Exception):
    """Bad data, params or environment: the message is one line naming the file or key."""
