"""The router: resolves recipients to matters and persons and files messages into the store."""
