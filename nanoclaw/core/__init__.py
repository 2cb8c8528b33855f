"""What every daemon and command shares: configuration, the database, the spool and
socket protocol, the daemon skeleton, safe file access, and the rules (groups,
prompts, scheduled tasks) that more than one process applies."""
