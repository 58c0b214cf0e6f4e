"""The partner-task engine: what every task sent to a partner shares (completion, deadlines, delivery)."""
