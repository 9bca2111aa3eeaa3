"""Everything that differs per database: dialects, schema reflection, purging freed bytes."""
