"""Task families and the prepared-data cache."""
