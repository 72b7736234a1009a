"""The milter: inbound and outbound pipelines at the SMTP layer."""
