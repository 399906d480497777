"""What the CRM reads: segment tables, the day's publication, CSV exports."""
