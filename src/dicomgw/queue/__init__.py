"""The forward queue in PostgreSQL: claiming, finishing, retrying jobs."""
