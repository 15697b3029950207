"""The one error type the data layer raises: it always says how to fix the problem."""


class DatasetError(RuntimeError):
    """A dataset is missing, corrupt or unreadable."""
