"""Speaker verification: data (models arrive with issue 20)."""
