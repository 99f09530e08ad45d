"""Model export: pure planning (runs, validation, commands) apart from the runners that execute it."""
