"""``kelpseg tune``: Optuna search over config keys, local (SQLite) or shared (PostgreSQL)."""
