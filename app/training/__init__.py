"""Training monitor: runs under saves/, their progress and curves from trainer_log.jsonl."""
