"""gym-backup: renders the backup service of the gym management system from a .env file."""

__version__ = "0.1.0"
