"""What people read: run results and the audit log rendered as text, JSON, CSV and HTML."""
