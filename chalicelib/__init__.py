"""Domain of 一证通查: everything app.py wires into routes and Lambda functions."""
