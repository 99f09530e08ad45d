"""Storage: where the data directory's disk went, what is safe to delete and why, and deleting it.

`scan` walks the data dir once (no link followed), `kinds` names each path, `context` gathers what else
decides safety (the export history, the running export, trainings still running), `rules` says what is
safe, `report` puts them together, `delete` removes what the rules allow, `ollama_disk` asks Ollama's
container for its free space, and `service` is the app's long-lived part (one scan at a time, the banner).
"""
