"""The local stack (SPEC §7): moto in server mode, simulators, the app over HTTP.

Not deployed: Chalice packages app.py and chalicelib/ only.
"""
