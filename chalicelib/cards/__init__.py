"""Phone cards registered to an ID (SPEC §9): the parts of the card lookup that are not the engine."""
