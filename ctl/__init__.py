"""mattermailctl: the admin command line."""
