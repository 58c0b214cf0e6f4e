"""DynamoDB storage: PynamoDB models, the one definition of every table."""
